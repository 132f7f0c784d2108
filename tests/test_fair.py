"""Every method at its own best (DESIGN.md 10): the per-method rule of mltools.lr_grid, the
fashion-fair preset's settings and the BP-reference report, on run folders written here by hand.

The expected rates, epochs and intervals are worked out by hand (or with scipy's Welch test),
never with the code under test.
"""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mltools import cli, errors
from mltools.cli import read_choices
from mltools.lr_grid import half_decade
from mltools.reports import best_practices as report
from mltools.reports.best_practices import write_best_practices_report
from mltools.studies.experiments import BEST_PRACTICES_PRESETS

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, top1: list[float], status="done", cos=0.5, undefined=0.0, **config):
    """A run folder with epoch records 0..len(top1)-1 of these val/test top-1 values."""
    folder.mkdir(parents=True)
    config = {"epochs": len(top1) - 1, "status": status, "eval_split": "val", **config}
    (folder / "config.json").write_text(json.dumps(config))
    records = [
        {
            "epoch": e,
            "train_loss": 1.0,
            "train_top1": 50.0,
            "eval_loss": 1.0,
            "eval_top1": v,
            "time_s": 1.0,
            "alignment": [
                {
                    "point": p,
                    "name": f"h{p + 1}",
                    "cos_mean": cos,
                    "cos_std": 0.1,
                    "angle_deg": 60.0,
                    "weight_cos": 0.5,
                    "undefined_frac": undefined,
                }
                for p in range(3)
            ],
        }
        for e, v in enumerate(top1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def grid_run(grid: Path, lr: float, name: str, top1: list[float], method: str, **kwargs):
    write_run(
        grid / f"lr{lr:g}" / "best_practices" / name / "seed0",
        top1,
        experiment=name,
        method=method,
        lr=lr,
        **kwargs,
    )


def lr_grid(grid: Path, *flags: str, rule: str = "final") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mltools.lr_grid", str(grid), "--per-method", "--rule", rule]
        + list(flags),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


# Val curves, epochs 0..8. For BP at 0.03, early stopping's rule (best of E-1, E minus the
# best of 0..E-2, more than 1 point = still rising) gives, by hand:
#   E=3: max(70, 80) - max(10, 50) = 30;  E=4: 85 - 70 = 15;  E=5: 85.5 - 80 = 5.5;
#   E=6: max(85.5, 85.8) - max(10..85) = 0.8 <= 1: stop at epoch 6 (val 85.8 there).
BP_BEST = [10, 50, 70, 80, 85, 85.5, 85.8, 86.0, 86.2]
# DFA at 0.01: E=3: 80 - 60 = 20; E=4: 81 - 75 = 6; E=5: max(81, 80.5) - 80 = 1.0 (not more
# than 1): stop at 5, where val is 80.5 and the best so far (81) was at epoch 4.
DFA_BEST = [10, 60, 75, 80, 81, 80.5, 82, 83, 84]


@pytest.fixture()
def grid(tmp_path):
    g = tmp_path / "grid"
    for lr, top1 in ((0.01, 80.0), (0.03, 86.2), (0.1, 84.0)):
        curve = BP_BEST if lr == 0.03 else [10, 40, 60, 70, 75, 78, 79, 79.5, top1]
        grid_run(g, lr, "fc-bp", curve, "bp")
    # DFA is best at the grid's lowest rate: the rule asks for 0.003 first.
    grid_run(g, 0.01, "fc-tanh", DFA_BEST, "dfa")
    grid_run(g, 0.03, "fc-tanh", [10, 60, 70, 75, 78, 79, 80, 80.5, 81.0], "dfa")
    # FA: 0.1 diverged after a high epoch (it must count as 0%, not as its 95%) and 0.3
    # failed; 0.03 wins although its final is below the diverged run's last value.
    grid_run(g, 0.01, "fc-fa", [10, 30, 40, 50, 55, 57, 58, 59, 60.0], "fa")
    grid_run(g, 0.03, "fc-fa", [10, 40, 60, 65, 66, 66.5, 66.8, 67, 67.0], "fa")
    grid_run(g, 0.1, "fc-fa", [10, 95.0], "fa", status="diverged", diverged_epoch=2, epochs=8)
    grid_run(g, 0.3, "fc-fa", [10, 20], "fa", status="failed", epochs=8)
    return g


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_steady_rule_averages_the_last_epochs_of_two_seeds(tmp_path):
    """The steady rule scores a rate by the mean val top-1 over the last 3 epochs and seeds 0
    and 1; worked out by hand below. A lucky final epoch does not win, a diverged seed counts 0,
    and a rate with one seed is not finished."""
    g = tmp_path / "grid"

    def runs(lr, name, method, *curves, **kwargs):
        for seed, curve in enumerate(curves):
            folder = g / f"lr{lr:g}" / "best_practices" / name / f"seed{seed}"
            write_run(folder, curve, experiment=name, method=method, lr=lr, **kwargs)

    # BP at 0.1 ends on a lucky epoch (90) after swinging: (70+60+90)/3 = 73.33 and
    # (72+62+88)/3 = 74; mean 73.67. At 0.03 steady: (84+85+85)/3 = 84.67, (83+84+85)/3 = 84;
    # mean 84.33, chosen although both of 0.1's finals beat it. 0.01: (80+80+80)/3 = 80.
    runs(0.1, "fc-bp", "bp", [10, 50, 70, 60, 90], [10, 50, 72, 62, 88])
    runs(0.03, "fc-bp", "bp", [10, 50, 84, 85, 85], [10, 50, 83, 84, 85])
    runs(0.01, "fc-bp", "bp", [10, 50, 80, 80, 80], [10, 50, 80, 80, 80])
    # DFA: at 0.01 seed 1 diverged (0): (81+82+83)/3 / 2 = 41; 0.03: 70 and 72 -> 71, chosen,
    # at the grid's top edge: 0.1 is asked for. 0.003 has only seed 0: not finished.
    runs(0.01, "fc-tanh", "dfa", [10, 80, 81, 82, 83])
    write_run(
        g / "lr0.01/best_practices/fc-tanh/seed1", [10, 20], status="diverged", epochs=4, lr=0.01
    )
    runs(0.03, "fc-tanh", "dfa", [10, 60, 70, 70, 70], [10, 60, 72, 72, 72])
    runs(0.003, "fc-tanh", "dfa", [10, 30, 40, 50, 60])
    out = lr_grid(g, "--next", rule="steady")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["fc-tanh 0.003 4", "fc-tanh 0.1 4"]
    choices = tmp_path / "choices.json"
    assert lr_grid(g, "--choices", str(choices), rule="steady").returncode == 0
    data = json.loads(choices.read_text())
    assert "last 3 epochs" in data["rule"] and set(data["experiments"]) == {"fc-bp"}
    bp = data["experiments"]["fc-bp"]
    assert (bp["lr"], bp["epochs"]) == (0.03, 4)
    assert bp["val_top1_at_epochs"] == pytest.approx((84 + 85 + 85 + 83 + 84 + 85) / 6)
    rows = {(r["experiment"], r["lr"]): r for r in read_csv(g / "per_method.csv")}
    assert float(rows["fc-bp", "0.1"]["final_val_top1"]) == pytest.approx(221 / 3)
    assert float(rows["fc-tanh", "0.03"]["final_val_top1"]) == pytest.approx(71)


def test_steady_rule_refuses_a_seed0_grid_and_writes_nothing(grid, tmp_path):
    """A grid of seed 0 alone can never be scored by the steady rule: a one-line error (exit 2)
    that names the way out, and an existing choices file left as it was."""
    choices = tmp_path / "choices.json"
    choices.write_text("{}")
    out = lr_grid(grid, "--choices", str(choices), rule="steady")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--rule final" in out.stderr and "fc-bp" in out.stderr
    assert choices.read_text() == "{}"


def test_steady_rule_on_runs_shorter_than_its_span(tmp_path):
    """Runs of 2 epochs are scored on the epochs they have: BP at 0.1 (60+70)/2 and (62+68)/2
    -> 65; at 0.03 (80+90)/2 and (84+86)/2 -> 85; at 0.01 -> 50: 0.03 is chosen."""
    g = tmp_path / "grid"
    curves = {0.1: ([10, 60, 70], [10, 62, 68]), 0.03: ([10, 80, 90], [10, 84, 86])}
    curves[0.01] = ([10, 50, 50], [10, 50, 50])
    for lr, pair in curves.items():
        for seed, curve in enumerate(pair):
            folder = g / f"lr{lr:g}" / "best_practices" / "fc-bp" / f"seed{seed}"
            write_run(folder, curve, experiment="fc-bp", method="bp", lr=lr)
    choices = tmp_path / "choices.json"
    out = lr_grid(g, "--choices", str(choices), rule="steady")
    assert out.returncode == 0, out.stderr
    bp = json.loads(choices.read_text())["experiments"]["fc-bp"]
    assert bp["lr"] == 0.03 and bp["val_top1_final"] == pytest.approx(85)


def test_half_decade_steps_by_hand():
    assert [half_decade(x, up=True) for x in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)] == [
        0.01,
        0.03,
        0.1,
        0.3,
        1.0,
        3.0,
    ]
    assert [half_decade(x, up=False) for x in (0.003, 0.01, 0.03, 1.0)] == [0.001, 0.003, 0.01, 0.3]


def test_per_method_rate_epochs_edge_and_diverged(grid, tmp_path):
    out = lr_grid(grid, "--next")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "fc-tanh 0.003 8\n"  # DFA's best is the lowest rate: one lower
    choices = tmp_path / "choices.json"
    out = lr_grid(grid, "--choices", str(choices))
    assert out.returncode == 0, out.stderr
    assert "fc-tanh" in out.stderr  # left out: its grid is not finished
    data = json.loads(choices.read_text())["experiments"]
    assert set(data) == {"fc-bp", "fc-fa"}
    assert (data["fc-bp"]["lr"], data["fc-bp"]["epochs"]) == (0.03, 6)
    assert data["fc-bp"]["val_top1_at_epochs"] == 85.8 and data["fc-bp"]["max_epochs"] == 8
    # FA: not the diverged 0.1 (0%), nor the failed 0.3. Epochs by hand: E=5: max(66, 66.5) -
    # max(10..65) = 1.5, still rising; E=6: 66.8 - 66 = 0.8: stop at 6.
    assert read_choices(choices) == {"fc-bp": (0.03, 6), "fc-fa": (0.03, 6)}
    rows = {(r["experiment"], r["lr"]): r for r in read_csv(grid / "per_method.csv")}
    assert float(rows["fc-fa", "0.1"]["final_val_top1"]) == 0.0
    assert float(rows["fc-fa", "0.3"]["final_val_top1"]) == 0.0
    assert rows["fc-fa", "0.1"]["status"] == "diverged"
    assert rows["fc-bp", "0.03"]["chosen"] == "True" and rows["fc-bp", "0.1"]["chosen"] == "False"
    table = (grid / "per_method.md").read_text()
    assert "edge: run lr 0.003" in table

    # The extension: DFA at 0.003 ends lower, so 0.01 is no longer at an edge.
    grid_run(grid, 0.003, "fc-tanh", [10, 50, 60, 70, 72, 74, 75, 76, 77.0], "dfa")
    assert lr_grid(grid, "--next").stdout == ""
    assert lr_grid(grid, "--choices", str(choices)).returncode == 0
    dfa = json.loads(choices.read_text())["experiments"]["fc-tanh"]
    assert (dfa["lr"], dfa["epochs"], dfa["val_top1_at_epochs"]) == (0.01, 5, 80.5)
    line = next(x for x in (grid / "per_method.md").read_text().splitlines() if "| fc-tanh" in x)
    assert [c.strip() for c in line.split("|")][3:6] == ["77.00", "**84.00**", "81.00"]


def test_upper_edge_asks_for_the_next_half_decade(tmp_path):
    grid_run(tmp_path, 0.1, "conv-bp", [10, 50, 60, 70], "bp", arch="cnn")
    grid_run(tmp_path, 0.3, "conv-bp", [10, 55, 65, 75], "bp", arch="cnn")
    assert lr_grid(tmp_path, "--next").stdout == "conv-bp 1 3\n"
    grid_run(tmp_path, 1.0, "conv-bp", [10, 20], "bp", arch="cnn", status="diverged")
    assert lr_grid(tmp_path, "--next").stdout == ""


def test_per_method_errors_are_one_line(tmp_path):
    out = lr_grid(tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text('{"experiments": {"fc-bp": {"lr": -1, "epochs": 3}}}')
    with pytest.raises(errors.UsageError, match="bad.json"):
        read_choices(tmp_path / "bad.json")
    with pytest.raises(errors.UsageError, match="missing.json"):
        read_choices(tmp_path / "missing.json")


def test_fashion_fair_settings_per_experiment():
    preset = BEST_PRACTICES_PRESETS["fashion-fair"]
    assert (preset.eval_split, preset.seeds, preset.cnn_seeds, preset.reference) == (
        "test",
        5,
        3,
        "bp",
    )
    parser = argparse.ArgumentParser()
    cli.add_sweep_arguments(parser, BEST_PRACTICES_PRESETS)
    args = parser.parse_args(["--preset", "fashion-fair"])
    settings = cli.resolve_preset(args, BEST_PRACTICES_PRESETS, "best_practices.py")
    choices = {"fc-bp": (0.1, 12), "conv-tanh": (0.03, 9)}
    fc = cli.experiment_settings(settings, choices, "fc-bp", args)
    conv = cli.experiment_settings(settings, choices, "conv-tanh", args)
    assert (fc["lr"], fc["epochs"], fc["seeds"]) == (0.1, 12, 5)
    assert fc["recipe"].name == conv["recipe"].name == "paper"  # the study as it was run
    assert (conv["lr"], conv["epochs"], conv["seeds"]) == (0.03, 9, 3)
    assert (fc["dataset"], fc["train_samples"], fc["eval_split"]) == (
        "fashion-mnist",
        10_000,
        "test",
    )
    args.epochs, args.seeds = 2, 1  # flags given still override
    settings = cli.resolve_preset(args, BEST_PRACTICES_PRESETS, "best_practices.py")
    conv = cli.experiment_settings(settings, choices, "conv-tanh", args)
    assert (conv["lr"], conv["epochs"], conv["seeds"]) == (0.03, 2, 1)
    with pytest.raises(errors.UsageError, match="fc-relu"):
        cli.experiment_settings(settings, choices, "fc-relu", args)


def test_the_sweep_names_the_choices_file_it_reads(tmp_path):
    """The headline and the error name a path that exists from the repository root: the
    preset's file in mltools/studies/, or the one --choices gives, as given."""
    from mltools.sweeps.sweep import describe

    parser = argparse.ArgumentParser()
    cli.add_sweep_arguments(parser, BEST_PRACTICES_PRESETS)
    cli.add_choices_argument(parser)
    mine = tmp_path / "mine.json"
    mine.write_text((ROOT / "mltools" / "studies" / "fashion_fair.json").read_text())
    for flags, named in [
        (["--preset", "fashion-fair"], "mltools/studies/fashion_fair.json"),
        (["--preset", "fashion-fair", "--choices", str(mine)], str(mine)),
    ]:
        args = parser.parse_args(flags)
        settings = cli.resolve_preset(args, BEST_PRACTICES_PRESETS, "best_practices.py")
        cli.sweep_choices(args, BEST_PRACTICES_PRESETS["fashion-fair"], settings)
        assert f"({named})" in describe(settings)
        assert (ROOT / named).is_file()  # an absolute path stays itself under ROOT /
        with pytest.raises(errors.UsageError, match=f"\\({named} has fc-bp"):
            cli.experiment_settings(settings, {"fc-bp": (0.1, 2)}, "fc-tanh", args)


def test_fashion_fair_without_a_choice_exits_2():
    out = subprocess.run(
        [sys.executable, "best_practices.py", "--preset", "fashion-fair", "--experiments", "fc-bn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "fc-bn" in out.stderr or "fashion_fair.json" in out.stderr


# -- the BP-reference report --------------------------------------------------------------
FINAL = {  # test top-1 of each seed at its last epoch
    "fc-bp": [85.0, 86.0, 85.5, 86.5, 84.5],
    "fc-tanh": [84.0, 84.5, 83.0, 84.2, 83.9],
    "fc-shallow": [70.0, 71.0, 70.5, 69.5, 70.2],
    "conv-bp": [88.0, 89.0, 88.4],
    "conv-tanh": [88.5, 89.5, 89.1],
}
SETTINGS = {  # experiment: (method, arch, lr, epochs)
    "fc-bp": ("bp", "fc", 0.1, 6),
    "fc-tanh": ("dfa", "fc", 0.01, 4),
    "fc-shallow": ("shallow", "fc", 0.3, 5),
    "conv-bp": ("bp", "cnn", 0.3, 7),
    "conv-tanh": ("dfa", "cnn", 0.03, 5),
}


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    out = tmp_path_factory.mktemp("fair")
    for name, finals in FINAL.items():
        method, arch, lr, epochs = SETTINGS[name]
        for seed, top1 in enumerate(finals):
            curve = [10.0] + [top1 - 0.4] * (epochs - 2) + [top1 - 0.2, top1]  # on its plateau
            write_run(
                out / "best_practices" / name / f"seed{seed}",
                curve,
                cos=0.9 if method == "bp" else 0.4,
                undefined=1.0 if method == "shallow" else 0.0,
                experiment=name,
                method=method,
                arch=arch,
                lr=lr,
                seed=seed,
                eval_split="test",
            )
    write_best_practices_report(out, echo=lambda _: None, reference="bp")
    return out / "best_practices"


def test_bp_reference_effects_match_scipy_welch(fair):
    rows = {(r["experiment"], r["metric"]): r for r in read_csv(fair / "effects.csv")}
    # Against BP, top-1 only: BP's cosine is the DFA signal on a BP net, shallow's undefined.
    assert set(rows) == {("fc-tanh", "eval_top1"), ("fc-shallow", "eval_top1")} | {
        ("conv-tanh", "eval_top1")
    }
    for name, ref in (("fc-tanh", "fc-bp"), ("fc-shallow", "fc-bp"), ("conv-tanh", "conv-bp")):
        row, a, b = rows[name, "eval_top1"], FINAL[name], FINAL[ref]
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert row["reference"] == ref
        assert float(row["difference"]) == pytest.approx(np.mean(a) - np.mean(b), abs=1e-6)
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((ci.low, ci.high))


def test_bp_reference_table_rates_epochs_flags_and_sentence(fair):
    text = (fair / "report.md").read_text()
    section = text.split("## Against BP")[1].split("## Effects")[0]
    lines = {line.split("|")[3].strip(): line for line in section.splitlines() if "| fc-" in line}
    cells = [c.strip() for c in lines["fc-tanh"].split("|")]
    diff = np.mean(FINAL["fc-tanh"]) - np.mean(FINAL["fc-bp"])
    assert cells[4:8] == ["0.01", "paper", "4", "5"]  # its own lr and epochs, 5 seeds
    assert cells[9] == f"**{diff:+.2f}**"  # clear: the interval excludes 0
    assert cells[11] == "0.400" and cells[12:14] == ["0/5", "0/5"]
    bp = [c.strip() for c in lines["fc-bp"].split("|")]
    assert bp[9] == "reference" and bp[11] == f"0.900 {report.BP_MARK}"
    assert [c.strip() for c in lines["fc-shallow"].split("|")][11] == "undefined"
    ci = stats.ttest_ind(FINAL["fc-tanh"], FINAL["fc-bp"], equal_var=False).confidence_interval()
    assert (
        f"FC: DFA (fc-tanh) is {abs(diff):.2f} points below BP (fc-bp): DFA − BP = {diff:+.2f}, "
        f"95% CI [{ci.low:+.2f}, {ci.high:+.2f}], clear effect." in section
    )
    assert "No run is flagged as not converged." in text
    png = fair / "figures" / "top1-per-method.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_main_table_labels_bp_and_shallow_alignment(fair):
    text = (fair / "report.md").read_text()
    shallow = next(line for line in text.splitlines() if line.startswith("| fc-shallow "))
    assert shallow.count("undefined") == 7  # mean cos, cos h1-h3, deg h1-h3 (no h4 on FC)
    bp = next(line for line in text.splitlines() if line.startswith("| fc-bp "))
    assert f"0.900 {report.BP_MARK}" in bp
    assert "fc-shallow: h1" not in text  # no undefined-cosine note: shallow's is by definition
    rows = {r["experiment"]: r for r in read_csv(fair / "summary.csv")}
    assert rows["fc-shallow"]["alignment"] == "undefined" and rows["fc-shallow"]["cos_h1"] == ""
    assert rows["fc-bp"]["alignment"] == report.OTHER_ALIGNMENT["bp"]
    assert (rows["fc-bp"]["lr"], rows["fc-tanh"]["lr"]) == ("0.1", "0.01")


def test_dfa_reference_leaves_bp_and_shallow_alignment_out_of_effects(tmp_path):
    for name in ("fc-tanh", "fc-bp", "fc-shallow"):
        method = SETTINGS[name][0]
        for seed, top1 in enumerate(FINAL[name][:3]):
            write_run(
                tmp_path / "best_practices" / name / f"seed{seed}",
                [10, 50, top1 - 0.2, top1 - 0.1, top1],
                cos=0.9 if method == "bp" else 0.4,
                experiment=name,
                method=method,
                arch="fc",
                eval_split="test",
            )
    write_best_practices_report(tmp_path, echo=lambda _: None)
    metrics = {
        (r["experiment"], r["metric"])
        for r in read_csv(tmp_path / "best_practices" / "effects.csv")
    }
    assert metrics == {("fc-bp", "eval_top1"), ("fc-shallow", "eval_top1")}
    assert "## Against BP" not in (tmp_path / "best_practices" / "report.md").read_text()


def test_figures_leave_shallow_alignment_out(fair, monkeypatch):
    figures = []
    new = report.new_figure
    monkeypatch.setattr(report, "new_figure", lambda *a: figures.append(new(*a)) or figures[-1])
    rows, _ = report.collect_best_practices(fair.parent)
    report.write_group_figures(fair, rows)
    methods = next(f for f in figures if f._suptitle.get_text().startswith("methods:"))
    curves = [[line for line in ax.lines if line.get_linewidth() == 1.6] for ax in methods.axes]
    # FC tanh, FC BP, CNN tanh, CNN BP have alignment curves at h1; shallow has none.
    assert len(curves[0]) == 4
    assert len(curves[-1]) == 5  # the accuracy panel: all five
