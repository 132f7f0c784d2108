"""Tests of mltools.reports.best_practices on run folders written here by hand (not by the trainer
or runlog)."""

import csv
import json

import numpy as np
import pytest

from mltools.reports.best_practices import write_best_practices_report
from mltools.reports.tables import mean_std

EPOCHS = 3


def make_records(rng, n_points):
    """Epoch records 0..EPOCHS with random but plausible values."""
    records = []
    for epoch in range(EPOCHS + 1):
        records.append(
            {
                "epoch": epoch,
                "train_loss": float(rng.uniform(0.5, 2)),
                "train_top1": float(rng.uniform(10, 90)),
                "eval_loss": float(rng.uniform(0.5, 2)),
                "eval_top1": float(rng.uniform(10, 90)),
                "time_s": 1.5,
                "alignment": [
                    {
                        "point": p,
                        "name": f"h{p + 1} (Linear)",
                        "cos_mean": float(rng.uniform(-0.2, 0.9)),
                        "cos_std": 0.1,
                        "angle_deg": float(rng.uniform(20, 100)),
                        "weight_cos": 0.5,
                    }
                    for p in range(n_points)
                ],
            }
        )
    return records


def write_run(
    out,
    experiment,
    seed,
    records,
    status="done",
    arch="fc",
    method="dfa",
    diverged_epoch=None,
    damaged_line=None,
    config_text=None,
):
    folder = out / "best_practices" / experiment / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {
        "experiment": experiment,
        "arch": arch,
        "method": method,
        "epochs": EPOCHS,
        "seed": seed,
        "eval_split": "test",
        "status": status,
        "diverged_epoch": diverged_epoch,
    }
    (folder / "config.json").write_text(
        config_text if config_text is not None else json.dumps(config)
    )
    lines = [json.dumps(r) for r in records]
    if damaged_line is not None:
        lines.insert(damaged_line - 1, '{"epoch": 1, "train_loss": 0.9, "tra')  # a torn write
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small sweep and its report, written once for the tests that only read them (plots are
    slow)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    runs = {}
    # fc-tanh: two done seeds and one diverged (NaN-free but must be left out of means).
    runs["fc-tanh"] = [make_records(rng, 3) for _ in range(3)]
    for seed in range(2):
        write_run(tmp_path, "fc-tanh", seed, runs["fc-tanh"][seed])
    write_run(tmp_path, "fc-tanh", 2, runs["fc-tanh"][2][:2], status="diverged", diverged_epoch=1)
    # fc-relu: three done seeds, one with a damaged line in the middle of metrics.jsonl.
    runs["fc-relu"] = [make_records(rng, 3) for _ in range(3)]
    for seed in range(3):
        write_run(
            tmp_path, "fc-relu", seed, runs["fc-relu"][seed], damaged_line=3 if seed == 1 else None
        )
    # conv-tanh: two done seeds with four feedback points, and a seed whose config is unreadable.
    runs["conv-tanh"] = [make_records(rng, 4) for _ in range(2)]
    for seed in range(2):
        write_run(tmp_path, "conv-tanh", seed, runs["conv-tanh"][seed], arch="cnn")
    write_run(tmp_path, "conv-tanh", 2, make_records(rng, 4), arch="cnn", config_text="{not json")
    # fc-bp: a single seed (std shown as '-').
    runs["fc-bp"] = [make_records(rng, 3)]
    write_run(tmp_path, "fc-bp", 0, runs["fc-bp"][0], method="bp")
    lines = []
    path = write_best_practices_report(tmp_path, echo=lines.append)
    return tmp_path, runs, lines, path


def done_finals(runs, name):
    n_done = {"fc-tanh": 2, "fc-relu": 3, "conv-tanh": 2, "fc-bp": 1}[name]
    return [r[EPOCHS] for r in runs[name][:n_done]]


def test_summary_numbers_match_numpy(sweep):
    out, runs, _, path = sweep
    assert path == out / "best_practices" / "report.md"
    with open(out / "best_practices" / "summary.csv") as f:
        rows = {row["experiment"]: row for row in csv.DictReader(f)}
    # EXPERIMENTS order, only experiments that have runs.
    assert list(rows) == ["fc-tanh", "fc-relu", "conv-tanh", "fc-bp"]
    for name, row in rows.items():
        finals = done_finals(runs, name)
        for key in ("eval_top1", "train_top1"):
            values = np.array([r[key] for r in finals])
            assert float(row[f"{key}_mean"]) == pytest.approx(values.mean(), abs=1e-4)
            if len(values) > 1:
                assert float(row[f"{key}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-4)
            else:
                assert row[f"{key}_std"] == ""
        for p in range(len(finals[0]["alignment"])):
            cos = np.mean([r["alignment"][p]["cos_mean"] for r in finals])
            deg = np.mean([r["alignment"][p]["angle_deg"] for r in finals])
            assert float(row[f"cos_h{p + 1}"]) == pytest.approx(cos, abs=1e-6)
            assert float(row[f"deg_h{p + 1}"]) == pytest.approx(deg, abs=1e-4)
        assert row["seeds_used"] == str(len(finals))
    assert rows["fc-tanh"]["seeds_done"] == "2" and rows["fc-tanh"]["seeds_diverged"] == "1"
    assert rows["fc-relu"]["seeds_done"] == "3" and rows["fc-relu"]["seeds_diverged"] == "0"
    assert rows["conv-tanh"]["seeds_other"] == "1"  # the unreadable config: status unknown
    assert rows["fc-tanh"]["cos_h4"] == ""  # FC has three feedback points, CNN four
    assert rows["fc-bp"]["method"] == "bp" and rows["conv-tanh"]["architecture"] == "cnn"


def test_report_text_warnings_and_footnote(sweep):
    out, _, lines, _ = sweep
    text = (out / "best_practices" / "report.md").read_text()
    damaged = str(out / "best_practices" / "fc-relu" / "seed1" / "metrics.jsonl") + ":3"
    config = str(out / "best_practices" / "conv-tanh" / "seed2" / "config.json")
    # Warnings: echoed one line each and listed at the end of report.md.
    assert any(damaged in line for line in lines)
    assert any(config in line and "unreadable" in line for line in lines)
    warnings = text.split("## Warnings")[1]
    assert damaged in warnings and config in warnings
    # The footnote on diverged seeds, the std convention, the split-named column.
    assert "2 done / 1 diverged *" in text
    assert "left out of every mean" in text and "fc-tanh/seed2 (epoch 1)" in text
    assert "ddof = 1" in text and "| test top-1" in text
    assert "± -" in text.split("| fc-bp")[1].splitlines()[0]
    # The table is echoed to the terminal.
    assert any(line.startswith("| experiment") for line in lines)


def test_figures_per_group(sweep):
    out = sweep[0]
    figures = out / "best_practices" / "figures"
    for group in ("activations", "normalization", "dropout", "batch-norm", "bp-vs-dfa"):
        png = figures / f"{group}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_groups_without_data_are_skipped(tmp_path):
    rng = np.random.default_rng(1)
    write_run(tmp_path, "fc-leaky0.5", 0, make_records(rng, 3))
    write_run(tmp_path, "fc-leaky0.5", 1, make_records(rng, 3), status="running")
    write_best_practices_report(tmp_path, echo=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "best_practices" / "figures").iterdir()) == [
        "activations.png"
    ]
    row = next(csv.DictReader(open(tmp_path / "best_practices" / "summary.csv")))
    assert row["seeds_running"] == "1" and row["seeds_used"] == "1"
    assert (
        "1 done / 0 diverged, 1 running" in (tmp_path / "best_practices" / "report.md").read_text()
    )


def test_done_run_missing_final_epoch_is_left_out(tmp_path):
    rng = np.random.default_rng(2)
    full, short = make_records(rng, 3), make_records(rng, 3)[:EPOCHS]
    write_run(tmp_path, "fc-leaky0.1", 0, full)
    write_run(tmp_path, "fc-leaky0.1", 1, short)  # "done" but its last line is lost
    lines = []
    write_best_practices_report(tmp_path, echo=lines.append)
    row = next(csv.DictReader(open(tmp_path / "best_practices" / "summary.csv")))
    assert row["seeds_used"] == "1"
    assert float(row["eval_top1_mean"]) == pytest.approx(full[EPOCHS]["eval_top1"], abs=1e-4)
    assert any("seed1" in line and f"no record for epoch {EPOCHS}" in line for line in lines)


def test_mean_std_conventions():
    assert mean_std([1.0, 2.0, 4.0])[:2] == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
    m, s, n = mean_std([3.0, None, float("nan")])
    assert (m, n) == (3.0, 1) and np.isnan(s)
    assert mean_std([])[2] == 0


def test_odd_but_valid_json_does_not_crash(tmp_path):
    rng = np.random.default_rng(3)
    good = make_records(rng, 3)
    odd = [dict(r) for r in make_records(rng, 3)]
    odd[EPOCHS].update({"eval_top1": "n/a", "train_top1": True, "alignment": {"point": 0}})
    odd[1]["alignment"] = [None, {"name": "no point"}, {"point": 0, "cos_mean": "x"}]
    write_run(tmp_path, "fc-leaky0.01", 0, good)
    write_run(tmp_path, "fc-leaky0.01", 1, odd)
    write_best_practices_report(tmp_path, echo=lambda _: None)
    row = next(csv.DictReader(open(tmp_path / "best_practices" / "summary.csv")))
    # The odd seed's unusable values are skipped; the good seed's stand alone.
    assert float(row["eval_top1_mean"]) == pytest.approx(good[EPOCHS]["eval_top1"], abs=1e-4)
    assert float(row["cos_h1"]) == pytest.approx(good[EPOCHS]["alignment"][0]["cos_mean"], abs=1e-6)
    assert (tmp_path / "best_practices" / "figures" / "activations.png").stat().st_size > 1000


@pytest.mark.parametrize("chars", [10, 40, 100])
def test_a_group_legend_fits_its_figure(chars):
    """legend_columns' estimate against matplotlib's own text layout: the legend of three labels
    of ``chars`` characters, in the columns chosen, lies inside a figure as wide as a 2-point
    group figure (10.8 inches)."""
    from matplotlib.figure import Figure

    from mltools.reports.tables import legend_columns

    labels = [f"{k}" * chars for k in range(3)]
    width = 10.8
    columns = legend_columns(labels, width)
    assert columns == {10: 3, 40: 2, 100: 1}[chars]
    fig = Figure(figsize=(width, 5), layout="constrained")
    ax = fig.subplots()
    lines = [ax.plot([0, 1], [0, k])[0] for k in range(3)]
    legend = fig.legend(lines, labels, loc="outside lower center", ncol=columns, frameon=False)
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= width * fig.dpi
