"""The lr-grid rule (mltools.lr_grid) and publishing (mltools.publish) on folders written here."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from test_report import make_records, write_run

from mltools.lr_grid import REFERENCES, choose, grid_scores
from mltools.publish import publish

ROOT = Path(__file__).resolve().parents[1]


def write_grid(grid, finals: dict[float, dict[str, float | None]]):
    """One seed-0 run per reference and rate, whose final eval top-1 is given (None: diverged)."""
    rng = np.random.default_rng(0)
    for lr, values in finals.items():
        for name, top1 in values.items():
            records = make_records(rng, 3)
            records[-1]["eval_top1"] = top1 if top1 is not None else 50.0
            write_run(
                grid / f"lr{lr}",
                name,
                0,
                records,
                status="done" if top1 is not None else "diverged",
            )


def test_grid_rule_picks_the_best_mean_and_counts_diverged_as_zero(tmp_path):
    finals = {
        0.01: dict(zip(REFERENCES, [80.0, 60.0, 70.0, 50.0])),  # mean 65
        0.1: dict(zip(REFERENCES, [90.0, 90.0, 90.0, None])),  # mean 67.5 with 0 for diverged
        0.03: dict(zip(REFERENCES, [85.0, 70.0, 75.0, 60.0])),  # mean 72.5: the best
    }
    write_grid(tmp_path, finals)
    scores = grid_scores(tmp_path)
    assert list(scores) == [0.01, 0.03, 0.1]
    assert scores[0.1]["conv-bp"] == 0.0
    assert choose(scores) == 0.03
    out = subprocess.run(
        [sys.executable, "-m", "mltools.lr_grid", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "lr = 0.03" in out.stdout
    assert "| 0.03 (chosen) | 85.00" in (tmp_path / "lr_grid.md").read_text()


def test_grid_rule_on_a_folder_without_runs_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mltools.lr_grid", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_publish_copies_reports_and_run_records_only(tmp_path):
    src, dst = tmp_path / "results", tmp_path / "docs"
    run = write_run(src, "fc-tanh", 0, make_records(np.random.default_rng(1), 3))
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "model.pt", "run.lock", "log.txt"):
        (run / name).write_bytes(b"x")
    (src / "best_practices" / "report.md").write_text("# report")
    (src / "best_practices" / "figures").mkdir()
    (src / "best_practices" / "figures" / "effects.png").write_bytes(b"png")
    copied = {p.relative_to(dst).as_posix() for p in publish(src, dst)}
    assert copied == {
        "best_practices/fc-tanh/seed0/config.json",
        "best_practices/fc-tanh/seed0/metrics.jsonl",
        "best_practices/report.md",
        "best_practices/figures/effects.png",
    }
    assert (dst / "best_practices/fc-tanh/seed0/metrics.jsonl").read_bytes() == (
        run / "metrics.jsonl"
    ).read_bytes()
    without = {p.name for p in publish(src, tmp_path / "docs2", figures=False)}
    assert "effects.png" not in without and "report.md" in without
