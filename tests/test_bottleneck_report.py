"""Tests of mltools.reports.bottleneck and bottleneck_from_log.py on hand-written run folders."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fresh_interpreter import run_as_typed, run_script

from mltools.errors import UsageError
from mltools.legacy.bottleneck_recovered import write_recovered_bottleneck_report
from mltools.reports.bottleneck import write_bottleneck_report

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
POINTS = 3  # mask mode: h1, h2 (after the bottleneck), h3


def make_records(rng, points=POINTS):
    return [
        {
            "epoch": e,
            "train_loss": 1.0,
            "train_top1": float(rng.uniform(10, 90)),
            "eval_loss": 1.0,
            "eval_top1": float(rng.uniform(10, 90)),
            "time_s": 0.5,
            "alignment": [
                {
                    "point": p,
                    "name": f"h{p + 1} ({'Bottleneck' if p == 1 else 'Linear'})",
                    "cos_mean": float(rng.uniform(-0.1, 1)),
                    "cos_std": 0.1,
                    "angle_deg": float(rng.uniform(0, 90)),
                    "weight_cos": None,
                }
                for p in range(points)
            ],
        }
        for e in range(EPOCHS + 1)
    ]


def write_run(results, method, mode, init, size, seed, records, status="done", points="all"):
    """A run folder as bottleneck.py names it; dfa runs get no ``method`` key, and runs of all
    points no ``bottleneck_points`` or ``point_blocks``, as the runs written before them."""
    name = f"{mode}-{init}-b{size}" if method == "dfa" else f"{method}-{mode}-{init}-b{size}"
    name = name if points == "all" else f"{name}-points{points}"
    folder = results / "bottleneck" / name / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {
        **({} if method == "dfa" else {"method": method}),
        "arch": "bottleneck",
        "bottleneck_mode": mode,
        "init": init,
        "bottleneck_size": size,
        "bottleneck_point": 1,
        **(
            {}
            if points == "all"
            else {"bottleneck_points": points, "point_blocks": [1, 2], "bottleneck_point": 0}
        ),
        "epochs": EPOCHS,
        "seed": seed,
        "eval_split": "test",
        "status": status,
        "diverged_epoch": 1 if status == "diverged" else None,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# (method, mode, init, size); sorted() gives the table's order (dfa before fa, as in METHODS)
CELLS = [
    ("dfa", "mask", "std", 1),
    ("dfa", "mask", "std", 28),
    ("dfa", "mask", "std", 800),
    ("dfa", "mask", "pai", 1),
    ("dfa", "mask", "pai", 800),
    ("dfa", "width", "std", 5),
    ("fa", "mask", "std", 1),
    ("fa", "mask", "std", 800),
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two done seeds per cell (one cell with a third, diverged, seed); the report written once."""
    results = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(3)
    done = {}
    # Written in shuffled order: the table must sort by method, mode, init, size on its own.
    for cell in reversed(CELLS):
        done[cell] = [make_records(rng) for _ in range(2)]
        for seed, records in enumerate(done[cell]):
            write_run(results, *cell, seed, records)
    write_run(results, "dfa", "mask", "std", 28, 2, make_records(rng)[:2], status="diverged")
    figures = write_bottleneck_report(results, echo=lambda _: None)
    return results, done, figures


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_rows(rows, done, epoch):
    cell_of = lambda r: (r["method"], r["mode"], r["init"], int(r["size"]))  # noqa: E731
    assert [cell_of(r) for r in rows] == sorted(CELLS)
    for row in rows:
        finals = [rec[epoch] for rec in done[cell_of(row)]]
        for key in ("train_top1", "eval_top1"):
            values = np.array([r[key] for r in finals])
            assert float(row[f"{key}_mean"]) == pytest.approx(values.mean(), abs=1e-4)
            assert float(row[f"{key}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-4)
        cos = np.array([[a["cos_mean"] for a in r["alignment"]] for r in finals])
        deg = np.array([[a["angle_deg"] for a in r["alignment"]] for r in finals])
        for p in range(POINTS):
            assert float(row[f"cos_h{p + 1}"]) == pytest.approx(cos[:, p].mean(), abs=1e-6)
            assert float(row[f"deg_h{p + 1}"]) == pytest.approx(deg[:, p].mean(), abs=1e-4)
        assert row["bottleneck_point"] == "h2"  # point 1, named as the cos_h2 column
        assert float(row["bottleneck_cos_mean"]) == pytest.approx(cos[:, 1].mean(), abs=1e-6)
        assert float(row["bottleneck_cos_std"]) == pytest.approx(cos[:, 1].std(ddof=1), abs=1e-6)


def test_table_matches_numpy(sweep):
    results, done, figures = sweep
    assert figures == results / "bottleneck" / "figures"
    rows = read_rows(figures / "bottleneck_table.csv")
    check_rows(rows, done, EPOCHS)
    b28 = next(r for r in rows if r["init"] == "std" and r["size"] == "28")
    assert (b28["seeds_done"], b28["seeds_diverged"], b28["seeds_used"]) == ("2", "1", "2")
    md = (figures / "bottleneck_table.md").read_text()
    # Stable precision: top-1 with 2 decimals, cos with 3, degrees with 1.
    cells = next(
        row for row in md_rows(md, "method") if (row["init"], row["size"]) == ("std", "28")
    )
    assert cells["seeds"] == "2 done / 1 diverged"
    mean, std = (float(x) for x in cells["train top-1"].split(" ± "))
    assert cells["train top-1"] == f"{mean:.2f} ± {std:.2f}"
    assert len(cells["cos h1"].split(".")[1]) == 3 and len(cells["deg h3"].split(".")[1]) == 1


def test_methods_compared_within_method(sweep):
    """Each method's sizes are compared with that method's full width, never another method's."""
    results, done, figures = sweep
    effects = {(r["cell"], r["metric"]): r for r in read_rows(figures / "effects.csv")}
    for method, prefix in (("dfa", ""), ("fa", "fa-")):

        def cos(size: int, method: str = method) -> np.ndarray:
            """Final ``cos_mean`` after the bottleneck, per seed, of one size of ``method``."""
            final = [rec[EPOCHS] for rec in done[method, "mask", "std", size]]
            return np.array([r["alignment"][1]["cos_mean"] for r in final])

        row = effects[f"{prefix}mask-std-b1", "bottleneck_cos"]
        assert row["reference"] == f"{prefix}mask-std-b800"
        assert float(row["difference"]) == pytest.approx(cos(1).mean() - cos(800).mean(), abs=1e-6)
    md = (figures / "bottleneck_table.md").read_text()
    assert [r["method"] for r in md_rows(md, "method")] == [c[0] for c in sorted(CELLS)]


def md_rows(md, first_header):
    """The rows of the markdown table whose first column is ``first_header``, as dicts."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header, rows = split(lines[start]), []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, split(line))))
    return rows


def test_pngs_written(sweep):
    figures = sweep[2]
    for name in ("alignment_vs_size.png", "accuracy_vs_size.png"):
        data = (figures / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 1000


def test_epoch_option(tmp_path):
    rng = np.random.default_rng(4)
    done = {cell: [make_records(rng) for _ in range(2)] for cell in CELLS}
    for cell, runs in done.items():
        for seed, records in enumerate(runs):
            write_run(tmp_path, *cell, seed, records)
    figures = write_bottleneck_report(tmp_path, epoch=1, echo=lambda _: None)
    check_rows(read_rows(figures / "bottleneck_table.csv"), done, 1)
    with pytest.raises(UsageError, match="epoch 7"):
        write_bottleneck_report(tmp_path, epoch=7, echo=lambda _: None)


def test_2019_points_line_up_by_hidden_layer(tmp_path):
    """2019 runs (points at h2 and h3 only, config point_blocks [1, 2]) sit beside today's: their
    point 0 fills the cos h2 column, cos h1 stays empty, and each network's sizes are compared
    with its own size 800."""
    rng = np.random.default_rng(7)
    done = {}
    for points, n_points in (("2019-nomask", 2), ("2019", 2), ("all", 3)):
        for size in (1, 800):
            done[points, size] = [make_records(rng, n_points) for _ in range(2)]
            for seed, records in enumerate(done[points, size]):
                write_run(tmp_path, "dfa", "mask", "std", size, seed, records, points=points)
    figures = write_bottleneck_report(tmp_path, echo=lambda _: None)
    rows = read_rows(figures / "bottleneck_table.csv")
    assert [(r["points"], r["size"]) for r in rows] == [
        (p, s) for p in ("all", "2019", "2019-nomask") for s in ("1", "800")
    ]

    def finals(points, size, point):
        return np.array([rec[EPOCHS]["alignment"][point]["cos_mean"] for rec in done[points, size]])

    for row in rows:
        key = row["points"], int(row["size"])
        after = 1 if row["points"] == "all" else 0  # the point right after the bottleneck
        assert row["bottleneck_point"] == "h2"
        assert float(row["cos_h2"]) == pytest.approx(finals(*key, after).mean(), abs=1e-6)
        assert float(row["cos_h3"]) == pytest.approx(finals(*key, after + 1).mean(), abs=1e-6)
        assert float(row["bottleneck_cos_mean"]) == pytest.approx(float(row["cos_h2"]), abs=1e-6)
        assert (row["cos_h1"] == "") == (row["points"] != "all")
    effects = {
        (r["cell"], r["reference"], r["metric"]): r for r in read_rows(figures / "effects.csv")
    }
    row = effects["mask-std-b1-points2019", "mask-std-b800-points2019", "bottleneck_cos"]
    diff = finals("2019", 1, 0).mean() - finals("2019", 800, 0).mean()
    assert float(row["difference"]) == pytest.approx(diff, abs=1e-6)
    # Against today's network at the same size: at h2 in both, and no mean over other points.
    row = effects["mask-std-b1-points2019-nomask", "mask-std-b1", "bottleneck_cos"]
    diff = finals("2019-nomask", 1, 0).mean() - finals("all", 1, 1).mean()
    assert float(row["difference"]) == pytest.approx(diff, abs=1e-6)
    assert ("mask-std-b1-points2019", "mask-std-b1", "cos_mean_points") not in effects
    assert ("mask-std-b800-points2019", "mask-std-b800", "eval_top1") in effects
    md = (figures / "bottleneck_table.md").read_text()
    assert "`2019` (" in md and "points h2, h3)" in md and "points h1, h2, h3)" in md


# -- recovered 2019 logs ---------------------------------------------------------------------------
MODULES = [
    "Linear(in_features=3072, out_features=800, bias=True)",
    "Tanh()",
    "Linear(in_features=800, out_features=800, bias=True)",
    "Tanh()",
    "Linear(in_features=800, out_features=800, bias=True)",
    "Tanh()",
    "Linear(in_features=800, out_features=10, bias=True)",
]


def legacy_run(rng, epochs=3):
    return [
        {
            "epoch": e,
            "epochs": epochs,
            "time_s": 10.0,
            "train_loss": 1.0,
            "train_top1": round(float(rng.uniform(10, 90)), 2),
            "test_loss": 1.1,
            "test_top1": round(float(rng.uniform(10, 90)), 2),
            "modules": [
                {"index": i, "name": name, "mean": round(float(rng.uniform(0, 1)), 4), "std": 0.05}
                for i, name in enumerate(MODULES)
            ],
        }
        for e in range(1, epochs + 1)
    ]


def test_recovered_json(tmp_path):
    rng = np.random.default_rng(5)
    runs = [legacy_run(rng) for _ in range(3)]
    path = tmp_path / "old.recovered.json"
    path.write_text(json.dumps(runs))
    sizes = [8, 1, 64]
    figures = write_recovered_bottleneck_report(path, sizes, tmp_path / "out", echo=lambda _: None)
    rows = read_rows(figures / "bottleneck_table.csv")
    assert [int(r["size"]) for r in rows] == [1, 8, 64]
    for row in rows:
        last = runs[sizes.index(int(row["size"]))][-1]
        assert row["init"] == "recovered" and row["seeds_used"] == "1"
        assert float(row["train_top1_mean"]) == pytest.approx(last["train_top1"], abs=1e-4)
        assert float(row["eval_top1_mean"]) == pytest.approx(last["test_top1"], abs=1e-4)
        assert row["bottleneck_point"] == "m2"  # module 2, the second Linear module
        assert float(row["bottleneck_cos_mean"]) == pytest.approx(
            last["modules"][2]["mean"], abs=1e-6
        )
        assert row["bottleneck_cos_std"] == ""  # one run per size
    assert "deg_m2" not in rows[0]  # 2019 logs hold no angles
    for name in ("alignment_vs_size.png", "accuracy_vs_size.png", "bottleneck_table.md"):
        assert (figures / name).stat().st_size > 0
    # --module and --epoch pick another module and epoch.
    figures = write_recovered_bottleneck_report(
        path, sizes, tmp_path / "out2", epoch=2, module=4, echo=lambda _: None
    )
    row = read_rows(figures / "bottleneck_table.csv")[0]
    assert float(row["bottleneck_cos_mean"]) == pytest.approx(
        runs[1][1]["modules"][4]["mean"], abs=1e-6
    )
    with pytest.raises(UsageError, match="2 sizes given for 3"):
        write_recovered_bottleneck_report(path, [1, 2], tmp_path / "out3", echo=lambda _: None)


# -- the script ------------------------------------------------------------------------------------
def test_script_runs_without_torch(sweep, tmp_path):
    results = sweep[0]
    proc, code, modules = run_script(
        "bottleneck_from_log.py", str(results), report=tmp_path / "run.json"
    )
    assert code == 0, proc.stderr
    assert "torch" not in {m.split(".")[0] for m in modules}
    assert f"wrote {results / 'bottleneck' / 'figures'}" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "does not exist"),
        (["{tmp}"], "no bottleneck runs"),
        (["{tmp}", "--recovered", "{tmp}/old.json"], "--recovered needs --sizes"),
        (["{tmp}", "--sizes", "1", "2"], "need --recovered"),
        (["{tmp}", "--recovered", "{tmp}/old.json", "--sizes", "1"], "1 sizes given for 2"),
        (["{tmp}", "--recovered", "{tmp}/bad.json", "--sizes", "1"], "cannot read recovered log"),
        (
            ["{tmp}", "--recovered", "{tmp}/notruns.json", "--sizes", "1"],
            "not a recovered 2019 log",
        ),
    ],
)
def test_script_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "old.json").write_text(json.dumps([legacy_run(np.random.default_rng(6))] * 2))
    (tmp_path / "bad.json").write_text('[[{"epoch": 1, ')
    (tmp_path / "notruns.json").write_text('{"epoch": 1}')
    proc = run_as_typed("bottleneck_from_log.py", *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""
