"""Tests of log_retrieval.py (mltools.legacy.retrieval): our log.txt and 2019-format logs back to
metrics."""

import json
import shutil
from pathlib import Path

import numpy as np
from fresh_interpreter import run_as_typed

from mltools.runs.runlog import RECOVERED, RunLog

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def make_records(rng, n_points=3, epochs=EPOCHS):
    return [
        {
            "epoch": e,
            "train_loss": float(rng.uniform(0, 3)),
            "train_top1": float(rng.uniform(0, 100)),
            "eval_loss": float(rng.uniform(0, 3)),
            "eval_top1": float(rng.uniform(0, 100)),
            "time_s": float(rng.uniform(0, 60)),
            "alignment": [
                {
                    "point": p,
                    "name": f'h{p + 1} (Linear, "quoted")',
                    "cos_mean": float(rng.uniform(-1, 1)),
                    "cos_std": float(rng.uniform(0, 1)),
                    "angle_deg": float(rng.uniform(0, 180)),
                    "weight_cos": None if p == 0 else float(rng.uniform(-1, 1)),
                }
                for p in range(n_points)
            ],
        }
        for e in range(epochs + 1)
    ]


def write_log(run_dir, records, epochs=EPOCHS):
    log = RunLog(run_dir)
    log.write("start: fc-tanh seed0 on cpu")
    for record in records:
        log.epoch(record, epochs)
        log.write("checkpoint saved")


def read_recovered(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r.pop("recovered") is True for r in records)
    return records


def test_run_folder_round_trip_is_exact(tmp_path):
    records = make_records(np.random.default_rng(0))
    write_log(tmp_path, records)
    proc = run_as_typed("log_retrieval.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_recovered(tmp_path / RECOVERED) == records  # floats compare exactly
    assert "4 epochs (0..3) recovered" in proc.stdout
    assert f"last eval top-1 {records[-1]['eval_top1']:.2f}%" in proc.stdout
    assert proc.stderr == ""


def test_log_file_path_and_resumed_run(tmp_path):
    rng = np.random.default_rng(1)
    first, second = make_records(rng), make_records(rng)
    write_log(tmp_path, first[:3])  # epochs 0, 1, 2, then the process died
    RunLog(tmp_path).write("resuming from checkpoint at epoch 1")
    write_log(tmp_path, second[2:])  # epoch 2 again, then 3: the last occurrence wins
    proc = run_as_typed("log_retrieval.py", tmp_path / "log.txt")
    assert proc.returncode == 0, proc.stderr
    assert read_recovered(tmp_path / RECOVERED) == first[:2] + second[2:]


def test_damaged_lines_warn_and_do_not_crash(tmp_path):
    records = make_records(np.random.default_rng(2))
    write_log(tmp_path, records)
    lines = (tmp_path / "log.txt").read_text().splitlines(keepends=True)
    epoch1 = next(i for i, line in enumerate(lines) if "epoch 1/3 train_loss" in line)
    lines[epoch1] = lines[epoch1].replace("eval_top1=", "eval_top1=4x5")  # a flipped byte
    lines.insert(3, "\x00\x00\xff garbage \x1b[0m\n")
    # A torn last line: its number may have lost digits, so it must not be trusted.
    lines[-1] = "[2019-01-01 00:00:00] epoch 4/3 train_loss=0.5 train_top1=45.6"
    (tmp_path / "log.txt").write_text("".join(lines))
    proc = run_as_typed("log_retrieval.py", tmp_path)
    assert proc.returncode == 0
    got = read_recovered(tmp_path / RECOVERED)
    # Epoch 1's main line is gone, so its alignment lines are dropped too.
    assert [r["epoch"] for r in got] == [0, 2, 3] and got[1:] == records[2:]
    warnings = proc.stderr.strip().splitlines()
    assert any(f"log.txt:{epoch1 + 2}: damaged epoch line" in w for w in warnings)  # +1 inserted
    assert any(f"log.txt:{len(lines)}: last line is cut off" in w for w in warnings)
    assert all(w.startswith("warning: ") for w in warnings)


def test_unusable_inputs(tmp_path):
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 4)
    proc = run_as_typed("log_retrieval.py", tmp_path / "junk.bin")
    assert proc.returncode == 1 and "nothing written" in proc.stdout
    for args, message in [
        ([tmp_path / "missing"], "no such file"),
        ([tmp_path], "without log.txt"),
        ([tmp_path / "junk.bin", tmp_path / "junk.bin", "-o", tmp_path / "x"], "single PATH"),
    ]:
        proc = run_as_typed("log_retrieval.py", *args)
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


# -- 2019-format logs ------------------------------------------------------------------------------
def legacy_text():
    """Two runs in one file, ANSI codes and [DMOD] INFO. tags, a damaged line, a truncated tail."""
    lin = "Linear(in_features=3072, out_features=800, bias=True)"
    tag = "\x1b[1;32m[DMOD] INFO.\x1b[0m "
    lines = [
        "[DMOD] INFO. loading data",
        tag + "EPOCH 1/2, last epoch processed in 3.5s:",
        tag + f"0_{lin} -- mean:0.0100, std:0.2000",
        tag + "1_Tanh() -- mean:0.5000, std:0.1000",
        tag + "Training loss: 2.0000 (top-1:\x1b[1m20.50%\x1b[0m) "
        "-- Validation loss: 2.1000 (top-1:19.25%).",
        tag + "EPOCH 2/2, last epoch processed in 3.4s:",
        tag + f"0_{lin} -- mean:0.0200, std:0.2100",
        tag + "1_Tanh() -- mean:0.6000, std:0.0900",
        tag + "Training loss: 1.5000 (top-1:40.00%) -- Validation loss: 1.6000 (top-1:38.75%).",
        "[DMOD] INFO. EPOCH 1/2, last epoch processed in 3.6s:",  # run 2 starts
        f"[DMOD] INFO. 0_{lin} -- mean:0.0300, std:0.2200",
        "[DMOD] INFO. 1_Tanh() -- mean:0.4000, std:0.1100",
        "[DMOD] INFO. Training loss: 1.9000 (top-1:22.00%) "
        "-- Validation loss: 2.0000 (top-1:21.50%).",
        "[DMOD] INFO. EPOCH 2/2, last epoch processed in 3.3s:",
        "[DMOD] INFO. 0_Lin#@! mean:: std",  # damaged module line
        "[DMOD] INFO. 1_Tanh() -- mean:0.7000, std:0.0800",
        "[DMOD] INFO. Training loss: 1.4000 (top-1:45.00%) -- Validation loss: 1.5",
    ]  # cut off
    return "\n".join(lines)  # no final newline: the file was cut mid-write


def test_legacy_log_to_json(tmp_path):
    path = tmp_path / "train_2019.log"
    path.write_text(legacy_text())
    proc = run_as_typed("log_retrieval.py", path)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads((tmp_path / "train_2019.log.recovered.json").read_text())
    assert len(runs) == 2 and [len(r) for r in runs] == [2, 2]
    assert [(e["train_top1"], e["test_top1"]) for e in runs[0]] == [(20.5, 19.25), (40.0, 38.75)]
    assert runs[0][1]["modules"][1] == {"index": 1, "name": "Tanh()", "mean": 0.6, "std": 0.09}
    assert runs[1][0]["train_top1"] == 22.0 and runs[1][0]["time_s"] == 3.6
    # The cut loss line keeps what is certain and drops the cut number.
    assert runs[1][1]["train_top1"] == 45.0 and runs[1][1]["test_top1"] is None
    assert [m["index"] for m in runs[1][1]["modules"]] == [1]
    warnings = proc.stderr.strip().splitlines()
    assert any("train_2019.log:15:" in w for w in warnings)
    assert any("train_2019.log:17:" in w for w in warnings)
    assert "2 run(s)" in proc.stdout and "run 1: 2 epochs (1..2)" in proc.stdout
    assert "test top-1 38.75%" in proc.stdout
    # -o names the output.
    proc = run_as_typed("log_retrieval.py", path, "-o", tmp_path / "out.json")
    assert proc.returncode == 0 and json.loads((tmp_path / "out.json").read_text()) == runs


# -- the recovery story: lose metrics.jsonl, rebuild it from log.txt, same bottleneck table --------
def write_bottleneck_run(results, mode, init, size, seed, records):
    folder = results / "bottleneck" / f"{mode}-{init}-b{size}" / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {
        "arch": "bottleneck",
        "bottleneck_mode": mode,
        "init": init,
        "bottleneck_size": size,
        "bottleneck_point": 1,
        "epochs": EPOCHS,
        "seed": seed,
        "eval_split": "test",
        "status": "done",
        "diverged_epoch": None,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    log = RunLog(folder)
    for record in records:
        log.epoch(record, EPOCHS)
    return folder


def test_deleted_metrics_rebuilt_give_the_same_table(tmp_path):
    rng = np.random.default_rng(3)
    folders = [
        write_bottleneck_run(tmp_path, mode, init, size, seed, make_records(rng))
        for mode, init, size in [
            ("mask", "std", 1),
            ("mask", "std", 28),
            ("mask", "pai", 28),
            ("width", "std", 5),
        ]
        for seed in range(2)
    ]
    figures = tmp_path / "bottleneck" / "figures"
    proc = run_as_typed("bottleneck_from_log.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = {
        name: (figures / name).read_text()
        for name in ("bottleneck_table.csv", "bottleneck_table.md")
    }
    shutil.rmtree(figures)
    lost = folders[::3]
    for folder in lost:
        (folder / "metrics.jsonl").unlink()
    proc = run_as_typed("log_retrieval.py", *lost)
    assert proc.returncode == 0, proc.stderr
    proc = run_as_typed("bottleneck_from_log.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, text in before.items():
        assert (figures / name).read_text() == text


def test_genuine_2019_log_prints_its_summary_and_few_warnings(tmp_path):
    """Two runs of the 2019 code (780 progress lines per epoch block, set-up lines) read
    silently; 7 stray lines inside epoch blocks show as the first 3 and a count, all with -v."""
    from test_legacy_log import file_log_2019

    lines = file_log_2019(0, 2) + file_log_2019(1, 2)
    blocks = [i for i, line in enumerate(lines) if "Batch 5/" in line]  # one per epoch block
    assert len(blocks) == 4
    for k, i in enumerate(sorted(blocks + blocks[:3], reverse=True)):
        lines.insert(i, f"stray print {k}")
    path = tmp_path / "log_2019.txt"
    path.write_text("\n".join(lines) + "\n")
    proc = run_as_typed("log_retrieval.py", path)
    assert proc.returncode == 0, proc.stderr
    assert "2 run(s)" in proc.stdout and "run 2: 2 epochs (1..2)" in proc.stdout
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 4 and all("unrecognised line" in w for w in warnings[:3])
    assert (
        warnings[3]
        == f"warning: {path}: 7 unrecognised lines in all, 4 not shown (--verbose lists them)"
    )
    shown = [int(w.split(":")[2]) for w in warnings[:3]]
    assert shown == sorted(shown) and all(lines[n - 1].startswith("stray print") for n in shown)
    proc = run_as_typed("log_retrieval.py", path, "--verbose")
    assert len(proc.stderr.strip().splitlines()) == 7
    path.write_text("\n".join(file_log_2019(0, 2)) + "\n")
    proc = run_as_typed("log_retrieval.py", path)
    assert proc.returncode == 0 and proc.stderr == ""
