"""Tests of mltools.reports.effects and of the Effects, convergence and undefined-cosine parts of
both reports.

Intervals are checked against an independent computation: scipy's Welch t-test.
"""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mltools.reports.best_practices import write_best_practices_report
from mltools.reports.bottleneck import write_bottleneck_report
from mltools.reports.effects import (
    reference_of,
    welch_interval,
)
from mltools.reports.flags import (
    unconverged,
    unsteady,
)
from mltools.runs.runlog import load_run

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4


def records(top1, cos, step=0.0, undefined=None):
    """Epoch records 0..EPOCHS ending at eval top-1 ``top1`` and ``cos`` (one cos_mean per point);
    top-1 grows by ``step`` per epoch, so it rises by ``2 * step`` over the last two epochs."""
    out = []
    for epoch in range(EPOCHS + 1):
        points = [
            {
                "point": p,
                "name": f"h{p + 1}",
                "cos_mean": c,
                "cos_std": 0.1,
                "angle_deg": 60.0,
                "weight_cos": 0.5,
                **({} if undefined is None else {"undefined_frac": undefined[p]}),
            }
            for p, c in enumerate(cos)
        ]
        out.append(
            {
                "epoch": epoch,
                "train_loss": 1.0,
                "train_top1": 50.0,
                "eval_loss": 1.0,
                "eval_top1": top1 - step * (EPOCHS - epoch),
                "time_s": 1.0,
                "alignment": points,
            }
        )
    return out


def write_run(folder, recs, status="done", **config):
    folder.mkdir(parents=True)
    config = {"epochs": EPOCHS, "eval_split": "test", "status": status, **config}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def write_experiment(out, name, finals, arch="fc", status="done", **kwargs):
    """One seed per ``(top1, cos)`` in ``finals``; ``kwargs`` go to :func:`records`."""
    for seed, (top1, cos) in enumerate(finals):
        write_run(
            out / "best_practices" / name / f"seed{seed}",
            records(top1, cos, **kwargs),
            status=status,
            experiment=name,
            arch=arch,
            seed=seed,
        )


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# Final (top-1, cos per point) of each done seed.
FC3 = lambda *cos: list(cos)  # noqa: E731  (three feedback points)
BEST = {
    "fc-tanh": [
        (90.0, FC3(0.5, 0.6, 0.7)),
        (91.0, FC3(0.45, 0.62, 0.71)),
        (92.5, FC3(0.52, 0.58, 0.69)),
    ],
    "fc-relu": [
        (80.0, FC3(0.2, 0.3, 0.5)),
        (83.0, FC3(0.25, 0.2, 0.55)),
        (79.5, FC3(0.1, 0.35, 0.4)),
        (85.0, FC3(0.3, 0.25, 0.45)),
    ],
    "fc-leaky0.1": [(89.0, FC3(0.5, 0.5, 0.6)), (93.0, FC3(0.4, 0.6, 0.7))],
    "fc-bp": [(95.0, FC3(1.0, 1.0, 1.0))],
    "conv-tanh": [(70.0, [0.3, 0.4, 0.5, 0.6])] * 3,
    "conv-bn": [(75.0, [0.35, 0.4, 0.5, 0.6])] * 2,  # constant on both sides: variances 0
    "conv-tanh-2019": [
        (68.0, [0.2, 0.3, 0.4]),
        (71.0, [0.25, 0.3, 0.45]),
        (66.0, [0.2, 0.35, 0.4]),
    ],
}


@pytest.fixture(scope="module")
def best(tmp_path_factory):
    out = tmp_path_factory.mktemp("best")
    for name, finals in BEST.items():
        write_experiment(out, name, finals, arch="cnn" if name.startswith("conv") else "fc")
    # A diverged fc-relu seed with a wild value: it must not count.
    write_run(
        out / "best_practices" / "fc-relu" / "seed9",
        records(10.0, FC3(-0.9, -0.9, -0.9)),
        status="diverged",
        experiment="fc-relu",
        arch="fc",
        diverged_epoch=3,
    )
    write_best_practices_report(out, echo=lambda _: None)
    root = out / "best_practices"
    rows = {(r["experiment"], r["metric"]): r for r in read_csv(root / "effects.csv")}
    return root, rows


def per_run(name, metric):
    """The independent per-seed values of a metric, straight from BEST."""
    if metric == "eval_top1":
        return [top1 for top1, _ in BEST[name]]
    if metric == "cos_mean_points":
        return [float(np.mean(cos)) for _, cos in BEST[name]]
    point = int(metric.removeprefix("cos_h")) - 1
    return [cos[point] for _, cos in BEST[name]]


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on conv-tanh's constant top-1
@pytest.mark.parametrize(
    "name, reference, metrics",
    [
        ("fc-relu", "fc-tanh", ["eval_top1", "cos_h1", "cos_h2", "cos_h3", "cos_mean_points"]),
        ("fc-leaky0.1", "fc-tanh", ["eval_top1", "cos_h1", "cos_h2", "cos_h3", "cos_mean_points"]),
        ("conv-tanh-2019", "conv-tanh", ["eval_top1", "cos_mean_points"]),
    ],
)
def test_intervals_match_scipy_welch(best, name, reference, metrics):
    _, rows = best
    assert sorted(m for n, m in rows if n == name) == sorted(metrics)
    for metric in metrics:
        a, b = per_run(name, metric), per_run(reference, metric)
        row = rows[name, metric]
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert row["reference"] == reference
        assert float(row["difference"]) == pytest.approx(np.mean(a) - np.mean(b), abs=1e-6)
        assert float(row["ci_low"]) == pytest.approx(ci.low, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx(ci.high, abs=1e-5)
        assert (row["seeds"], row["seeds_reference"]) == (str(len(a)), str(len(b)))
        assert row["clear"] == str(ci.low > 0 or ci.high < 0)


def test_clear_effects_and_verdicts(best):
    root, rows = best
    assert rows["fc-relu", "eval_top1"]["clear"] == "True"  # about -11 points: clear
    assert rows["fc-relu", "eval_top1"]["seeds"] == "4"  # the diverged seed is left out
    # Both variances 0: the interval is [diff, diff], a clear effect since diff != 0.
    zero = rows["conv-bn", "eval_top1"]
    assert float(zero["ci_low"]) == float(zero["ci_high"]) == float(zero["difference"]) == 5.0
    assert zero["clear"] == "True" and zero["df"] == ""
    # One seed: a difference but no interval.
    one = rows["fc-bp", "eval_top1"]
    assert float(one["difference"]) == pytest.approx(
        95.0 - np.mean(per_run("fc-tanh", "eval_top1"))
    )
    assert (one["ci_low"], one["ci_high"], one["clear"], one["seeds"]) == ("", "", "", "1")
    # References have no effect rows of their own.
    assert not {n for n, _ in rows} & {"fc-tanh", "conv-tanh"}
    text = (root / "report.md").read_text()
    effects = text.split("## Effects")[1]
    relu = next(
        line
        for line in effects.splitlines()
        if line.startswith("| fc-relu") and "test top-1" in line
    )
    assert "**clear effect**" in relu and "4 vs 3" in relu
    assert "no interval" in next(
        line for line in effects.splitlines() if line.startswith("| fc-bp")
    )
    assert "conv-tanh-2019: no per-point effects" in effects and "3 feedback points" in effects
    png = root / "figures" / "effects.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000


def test_welch_interval_edges():
    assert all(
        math.isnan(x)
        for x in (welch_interval([1.0], [1.0, 2.0]).low, welch_interval([], [1.0]).diff)
    )
    assert welch_interval([1.0], [1.0, 2.0]).diff == -0.5
    iv = welch_interval([2.0, 2.0], [1.0, 1.0, 1.0])
    assert (iv.low, iv.high) == (1.0, 1.0) and math.isnan(iv.df)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5), rng.normal(1, 3, 9)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    iv = welch_interval(a, b)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high))
    assert iv.df == pytest.approx(stats.ttest_ind(a, b, equal_var=False).df)


def test_reference_names():
    assert reference_of("fc-relu") == reference_of("fc-fa") == "fc-tanh"
    assert reference_of("conv-tanh-2019") == reference_of("conv-sign") == "conv-tanh"
    assert reference_of("fc-tanh") is None and reference_of("conv-tanh") is None
    assert reference_of("mlp-x") is None


def test_missing_reference_is_said(tmp_path):
    write_experiment(tmp_path, "fc-relu", BEST["fc-relu"])
    text = write_best_practices_report(tmp_path, echo=lambda _: None).read_text()
    assert "No effects for fc-relu (vs fc-tanh)" in text
    assert read_csv(tmp_path / "best_practices" / "effects.csv") == []
    assert not (tmp_path / "best_practices" / "figures" / "effects.png").exists()


# -- convergence -----------------------------------------------------------------------------------
def test_unconverged_criterion(tmp_path):
    def run(name, recs):
        write_run(tmp_path / name, recs)
        r = load_run(tmp_path / name)
        return unconverged(r, r.last)

    assert run("rising", records(80.0, [0.5], step=0.75)) == (True, pytest.approx(1.5))
    assert run("flat", records(80.0, [0.5], step=0.5)) == (
        False,
        pytest.approx(1.0),
    )  # > 1.0, strictly
    assert run("short", records(80.0, [0.5], step=5.0)[:3]) == (None, None)  # epochs 0 to 2 only
    # On a plateau with a dip two epochs before the end: not flagged (the plain difference
    # top1[E] - top1[E-2] would be 3 points); a new high 1.5 points above the old one is.
    assert run("dip", plateau([90.0, 96.0, 98.0, 95.0, 97.5, 98.0])) == (False, pytest.approx(0.0))
    assert run("new high", plateau([90.0, 96.0, 98.0, 95.0, 99.5, 98.0])) == (
        True,
        pytest.approx(1.5),
    )
    assert run("early best", plateau([99.0, 96.0, 98.0, 95.0, 97.5, 98.0]))[0] is False


def test_unsteady_criterion(tmp_path):
    """Unsteady: eval top-1 over the last 3 epochs spans more than 1.5 points (max - min)."""

    def run(name, top1):
        write_run(tmp_path / name, plateau(top1))
        r = load_run(tmp_path / name)
        return unsteady(r, r.last)

    assert run("swing", [10.0, 80.0, 85.0, 72.6, 86.0]) == (True, pytest.approx(13.4))
    assert run("steady", [10.0, 50.0, 85.0, 86.0, 86.5]) == (False, pytest.approx(1.5))
    assert run("early swing", [10.0, 50.0, 85.0, 86.0, 86.4, 86.2]) == (False, pytest.approx(0.4))
    assert run("short", [10.0, 50.0, 85.0]) == (None, None)  # 2 trained epochs
    out = tmp_path / "report"
    write_experiment(out, "fc-tanh", BEST["fc-tanh"])
    text = write_best_practices_report(out, echo=lambda _: None).read_text()
    assert "No run is flagged as unsteady." in text
    swing = [{**r, "alignment": records(0.0, FC3(0.5, 0.5, 0.5))[0]["alignment"]} for r in
             plateau([10.0, 80.0, 85.0, 72.6, 86.0])]  # fmt: skip
    write_run(out / "best_practices" / "fc-relu" / "seed0", swing, experiment="fc-relu")
    text = write_best_practices_report(out, echo=lambda _: None).read_text()
    assert "fc-relu seed0: top-1 moved 13.40 points over its last 3 epochs" in text
    table = next(line for line in text.splitlines() if line.startswith("| fc-relu "))
    cells = [cell.strip() for cell in table.split("|")]
    assert cells[cells.index("0/1") + 1] == "1/1"  # unconverged 0/1, unsteady 1/1


def plateau(top1):
    """Epoch records 0..len-1 with these eval top-1 values."""
    out = records(0.0, [0.5])[:1] * len(top1)
    return [{**out[0], "epoch": e, "eval_top1": v} for e, v in enumerate(top1)]


def test_convergence_flags_in_report(tmp_path):
    write_experiment(tmp_path, "fc-tanh", BEST["fc-tanh"])
    write_experiment(tmp_path, "fc-relu", BEST["fc-relu"][:2], step=1.7)  # +3.40 over 2 epochs
    write_run(
        tmp_path / "best_practices" / "fc-relu" / "seed2",
        records(80.0, FC3(0.2, 0.3, 0.5))[:2],
        experiment="fc-relu",
        epochs=1,
    )  # done after one epoch: unknown
    text = write_best_practices_report(tmp_path, echo=lambda _: None).read_text()
    assert "fc-relu seed0: best of the last 2 epochs +3.40 points above the best before" in text
    assert "fc-relu seed1: best of the last 2 epochs +3.40 points above the best before" in text
    assert "max(top1[E−1], top1[E]) − max(top1[0..E−2]) > 1.0" in text
    table = next(line for line in text.splitlines() if line.startswith("| fc-relu "))
    cells = [cell.strip() for cell in table.split("|")]
    # Seeds 0 and 1 rise 1.7 a epoch: unconverged, and unsteady (3.4 over their last 3 epochs);
    # seed 2, one epoch, is unknown to both rules.
    assert cells[cells.index("2/3 (1 unknown)") + 1] == "2/3 (1 unknown)"
    rows = {r["experiment"]: r for r in read_csv(tmp_path / "best_practices" / "summary.csv")}
    assert (rows["fc-relu"]["seeds_unconverged"], rows["fc-relu"]["seeds_convergence_unknown"]) == (
        "2",
        "1",
    )
    assert rows["fc-tanh"]["seeds_unconverged"] == "0"
    assert "undefined_h1" not in rows["fc-tanh"]  # runs without undefined_frac: no such columns


# -- undefined cosines -----------------------------------------------------------------------------
def test_undefined_fraction_noted(tmp_path):
    write_experiment(tmp_path, "fc-tanh", BEST["fc-tanh"])  # older runs: no undefined_frac
    write_experiment(tmp_path, "fc-relu", BEST["fc-relu"][:2], undefined=[0.0, 0.61, 0.04])
    text = write_best_practices_report(tmp_path, echo=lambda _: None).read_text()
    assert (
        "fc-relu: h2 61.0% undefined" in text
        and "h3" not in text.split("fc-relu: h2")[1].splitlines()[0]
    )
    assert (
        "saturated softmax" in text
        and "fc-tanh:" not in text.split("Undefined cosines")[1].split("##")[0]
    )
    rows = {r["experiment"]: r for r in read_csv(tmp_path / "best_practices" / "summary.csv")}
    assert float(rows["fc-relu"]["undefined_h2"]) == pytest.approx(0.61)
    assert rows["fc-tanh"]["undefined_h2"] == ""


# -- bottleneck ------------------------------------------------------------------------------------
def write_cell(results, mode, init, size, finals, width=None, undefined=None):
    for seed, (top1, cos) in enumerate(finals):
        config = {
            "bottleneck_mode": mode,
            "init": init,
            "bottleneck_size": size,
            "bottleneck_point": 1,
            "arch": "bottleneck",
            "seed": seed,
            **({} if width is None else {"width": width}),
        }
        write_run(
            results / "bottleneck" / f"{mode}-{init}-b{size}" / f"seed{seed}",
            records(top1, cos, undefined=undefined),
            **config,
        )


def test_bottleneck_effects(tmp_path):
    cells = {
        ("mask", "std", 5): [
            (40.0, [0.6, 0.05, 0.5]),
            (45.0, [0.6, 0.1, 0.55]),
            (38.0, [0.5, 0.02, 0.4]),
        ],
        ("mask", "std", 800): [
            (85.0, [0.6, 0.7, 0.5]),
            (86.5, [0.62, 0.75, 0.5]),
            (84.0, [0.55, 0.65, 0.6]),
        ],
        ("width", "std", 3): [(30.0, [0.4, 0.1, 0.3]), (35.0, [0.5, 0.2, 0.3])],
        ("width", "std", 100): [(80.0, [0.5, 0.6, 0.5]), (82.0, [0.6, 0.7, 0.6])],
        ("mask", "pai", 5): [(60.0, [0.9, 0.9, 0.9])],
    }
    for (mode, init, size), finals in cells.items():
        write_cell(
            tmp_path,
            mode,
            init,
            size,
            finals,
            width=100 if mode == "width" else None,
            undefined=[0.0, 0.3, 0.0] if size == 5 and init == "std" else None,
        )
    folder = write_bottleneck_report(tmp_path, echo=lambda _: None)
    rows = {(r["cell"], r["metric"]): r for r in read_csv(folder / "effects.csv")}
    assert {c for c, _ in rows} == {
        "mask-std-b5",
        "width-std-b3",
    }  # width 100 is width-std's reference
    for cell, ref in (
        ("mask-std-b5", ("mask", "std", 800)),
        ("width-std-b3", ("width", "std", 100)),
    ):
        mode, init, size = cell.split("-")
        mine = cells[mode, init, int(size[1:])]
        for metric, value in (
            ("eval_top1", lambda f: f[0]),
            ("bottleneck_cos", lambda f: f[1][1]),
            ("cos_mean_points", lambda f: float(np.mean(f[1]))),
        ):
            a, b = [value(f) for f in mine], [value(f) for f in cells[ref]]
            ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
            row = rows[cell, metric]
            assert row["reference"] == "-".join((*ref[:2], f"b{ref[2]}"))
            assert float(row["difference"]) == pytest.approx(np.mean(a) - np.mean(b), abs=1e-6)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(
                (ci.low, ci.high), abs=1e-5
            )
    md = (folder / "bottleneck_table.md").read_text()
    assert "## Effects" in md and "No effects for mask-pai-b5 (vs size 800)" in md
    assert "cos h2 (bottleneck)" in md
    assert "mask-std-b5: h2 30.0% undefined" in md and "saturated softmax" in md
    table = {
        (r["mode"], r["init"], r["size"]): r for r in read_csv(folder / "bottleneck_table.csv")
    }
    assert float(table["mask", "std", "5"]["bottleneck_undefined_frac"]) == pytest.approx(0.3)
    assert table["mask", "std", "5"]["seeds_unconverged"] == "0"
    assert "seeds_unsteady" in table["mask", "std", "5"]
    assert "| unconverged | unsteady |" in md
    assert (folder / "effects.png").read_bytes()[:4] == b"\x89PNG"


def test_no_torch_and_lazy_scipy():
    code = (
        "import sys, mltools.reports.effects, mltools.reports.best_practices\n"
        "import mltools.reports.bottleneck\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy')]\n"
        "assert not heavy, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
