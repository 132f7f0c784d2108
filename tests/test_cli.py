"""The command lines as a user meets them: bad input is one line on stderr and exit code 2."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fresh_interpreter import run_as_typed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script, args, needle",
    [
        ("best_practices.py", ["--experiments", "nope"], "fc-tanh"),
        ("best_practices.py", ["--dataset", "nope"], "cifar10, cifar100, mnist"),
        ("best_practices.py", ["--epochs", "0"], "--epochs"),
        ("best_practices.py", ["--seeds", "-2"], "--seeds"),
        ("best_practices.py", ["--batch-size", "0"], "--batch-size"),
        ("best_practices.py", ["--lr", "-1"], "--lr"),
        ("best_practices.py", ["--lr", "nan"], "--lr"),
        ("best_practices.py", ["--shard", "2/2"], "--shard"),
        ("best_practices.py", ["--shard", "1of2"], "--shard"),
        ("best_practices.py", ["--device", "cuda:7"], "cuda:7"),
        ("best_practices.py", ["--device", "gpu"], "gpu"),
        (
            "best_practices.py",
            ["--dataset", "mnist", "--data-dir", "/nonexistent/data"],
            "/nonexistent/data",
        ),
        (
            "best_practices.py",
            ["--report-only", "--out", "/nonexistent/results"],
            "no best-practices runs",
        ),
        ("bottleneck.py", ["--sizes", "801"], "1..800"),
        ("bottleneck.py", ["--width", "16", "--sizes", "17"], "1..16"),
        ("bottleneck.py", ["--sizes", "0"], "--sizes"),
        ("bottleneck.py", ["--mode", "thin"], "--mode"),
        ("bottleneck.py", ["--epochs", "-1"], "--epochs"),
        (
            "bottleneck.py",
            ["--dataset", "cifar10", "--data-dir", "/nonexistent/data"],
            "--download",
        ),
        ("bottleneck.py", ["--methods", "dfa", "nope"], "--methods"),
        ("bottleneck.py", ["--methods", "fa", "--init", "pai"], "--init pai pairs with dfa only"),
        ("bottleneck.py", ["--points", "2018"], "--points"),
        ("bottleneck.py", ["--points", "2019", "--mode", "width"], "mask-mode"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, script, args, needle):
    result = (
        run_as_typed(script, *args, "--out", str(tmp_path / "out"))
        if "--out" not in args
        else run_as_typed(script, *args)
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_unwritable_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_as_typed("best_practices.py", "--out", str(blocker / "results"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "output folder" in result.stderr


def test_list_names_every_experiment():
    result = run_as_typed("best_practices.py", "--list")
    assert result.returncode == 0
    for name in ("fc-bn", "conv-drop0.1-0.1", "fc-pai", "conv-bp"):
        assert name in result.stdout


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        "fc-tanh",
        "--seeds",
        "1",
        "--epochs",
        "50",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored: give the script the default, as a terminal would.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = tmp_path / "best_practices" / "fc-tanh" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 2
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to resume" in err.lower()
    assert not (metrics.parent / "run.lock").exists()


def tiny_bottleneck_sweep(out: Path, *args: str) -> None:
    """bottleneck.py with ``args`` at width 16, sizes 2 and 16, one seed, one epoch."""
    small = "--width 16 --sizes 2 16 --seeds 1 --epochs 1 --train-samples 128 --eval-samples 128"
    result = run_as_typed(
        "bottleneck.py", *args, *small.split(), "--device", "cpu", "--quiet", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr


def test_bottleneck_methods_sweep(tmp_path):
    """--methods runs one sweep per method (PAI for dfa only) and the table has a row for each."""
    tiny_bottleneck_sweep(tmp_path, "--methods", "dfa", "fa", "shallow")
    folders = sorted(p.name for p in (tmp_path / "bottleneck").iterdir() if p.name != "figures")
    assert folders == [
        "fa-mask-std-b16",
        "fa-mask-std-b2",
        "mask-pai-b16",
        "mask-pai-b2",
        "mask-std-b16",
        "mask-std-b2",
        "shallow-mask-std-b16",
        "shallow-mask-std-b2",
    ]
    config = json.loads(
        (tmp_path / "bottleneck" / "fa-mask-std-b2" / "seed0" / "config.json").read_text()
    )
    assert (config["method"], config["init"], config["model"]["size"]) == ("fa", "std", 2)
    with open(tmp_path / "bottleneck" / "figures" / "bottleneck_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["init"], r["size"]) for r in rows] == [
        ("dfa", "pai", "2"),
        ("dfa", "pai", "16"),
        ("dfa", "std", "2"),
        ("dfa", "std", "16"),
        ("fa", "std", "2"),
        ("fa", "std", "16"),
        ("shallow", "std", "2"),
        ("shallow", "std", "16"),
    ]


def test_bottleneck_points_sweep(tmp_path):
    """--points runs one sweep per placement into its own folders, reported in one table."""
    tiny_bottleneck_sweep(tmp_path, "--points", "all", "2019", "2019-nomask", "--init", "std")
    folders = sorted(p.name for p in (tmp_path / "bottleneck").iterdir() if p.name != "figures")
    assert folders == [
        "mask-std-b16",
        "mask-std-b16-points2019",
        "mask-std-b16-points2019-nomask",
        "mask-std-b2",
        "mask-std-b2-points2019",
        "mask-std-b2-points2019-nomask",
    ]
    config = json.loads(
        (tmp_path / "bottleneck" / "mask-std-b2-points2019" / "seed0" / "config.json").read_text()
    )
    assert (config["model"]["points"], config["point_blocks"]) == ("2019", [1, 2])
    with open(tmp_path / "bottleneck" / "figures" / "bottleneck_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["points"], r["size"]) for r in rows] == [
        (p, s) for p in ("all", "2019", "2019-nomask") for s in ("2", "16")
    ]
    assert all(r["bottleneck_point"] == "h2" and r["cos_h2"] for r in rows)
