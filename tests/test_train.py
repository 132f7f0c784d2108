"""The training loop and sweeps on digits: smoke runs, resume, damaged files, divergence, locks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mltools.runs import runlog
from mltools.sweeps.sweep import RunSpec, run_sweep, select_shard
from mltools.training.train import RunConfig, train_run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def small(**changes) -> RunConfig:
    base = dict(experiment="fc-tanh", epochs=2, batch_size=64, lr=0.02, train_samples=256)
    return RunConfig(**{**base, **changes})


def metrics(run_dir: Path) -> list[dict]:
    """Epoch records without wall times, which legitimately differ between runs."""
    records = [json.loads(line) for line in (run_dir / runlog.METRICS).read_text().splitlines()]
    for r in records:
        r.pop("time_s")
    return records


@pytest.mark.parametrize(
    "arch, changes",
    [
        (
            "fc",
            {
                "experiment": "fc-drop",
                "model": {"input_dropout": 0.1, "dropout": 0.5, "batch_norm": True},
            },
        ),
        ("cnn", {"experiment": "conv-tanh", "train_samples": 64, "batch_size": 32}),
        ("bottleneck", {"experiment": "mask-std-b5", "model": {"size": 5, "width": 64}}),
        (
            "bottleneck",
            {
                "experiment": "width-pai-b5",
                "model": {"size": 5, "width": 64, "mode": "width"},
                "init": "pai",
            },
        ),
    ],
)
def test_one_epoch_smoke_run_writes_the_run_folder(tmp_path, arch, changes):
    cfg = small(arch=arch, epochs=1, **changes)
    assert train_run(cfg, tmp_path, CPU, quiet=True) == "done"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["status"] == "done" and config["seed"] == 0 and config["device"] == "cpu"
    assert config["versions"]["torch"] == torch.__version__
    records = metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1]
    n_points = {
        "fc": 3,
        "cnn": 4,
        "bottleneck": 3 if getattr(cfg.model, "mode", "") == "mask" else 4,
    }[arch]
    assert all(len(r["alignment"]) == n_points for r in records)
    assert all(0 <= r["eval_top1"] <= 100 for r in records)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "checkpoint.pt").exists()
    # The log alone rebuilds the metrics exactly.
    rebuilt, warnings = runlog.parse_log((tmp_path / "log.txt").read_text())
    assert warnings == [] and len(rebuilt) == 2
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in rebuilt] == records


def test_pai_run_starts_aligned(tmp_path):
    train_run(small(init="pai", epochs=1), tmp_path, CPU, quiet=True)
    first = metrics(tmp_path)[0]["alignment"]
    assert all(a["cos_mean"] > 0.99 for a in first)


def test_resume_after_extension_equals_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(epochs=3, model={"dropout": 0.3}), a, CPU, quiet=True)
    train_run(small(epochs=1, model={"dropout": 0.3}), b, CPU, quiet=True)
    train_run(small(epochs=3, model={"dropout": 0.3}), b, CPU, quiet=True)  # picks up at epoch 2
    assert metrics(a) == metrics(b)
    assert "resumed from the checkpoint of epoch 1" in (b / "log.txt").read_text()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_checkpoint_falls_back_to_previous_state(tmp_path, damage):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(epochs=3), a, CPU, quiet=True)
    train_run(small(epochs=2), b, CPU, quiet=True)
    ckpt = b / "checkpoint.pt"
    ckpt.write_bytes(b"" if damage == "empty" else ckpt.read_bytes()[:100])
    train_run(small(epochs=3), b, CPU, quiet=True)
    log = (b / "log.txt").read_text()
    assert "checkpoint.pt is damaged" in log and "resumed from the checkpoint of epoch 1" in log
    assert metrics(a) == metrics(b)


def test_no_checkpoint_restarts_from_scratch_and_says_so(tmp_path):
    train_run(small(epochs=1), tmp_path, CPU, quiet=True)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).unlink()
    train_run(small(epochs=2), tmp_path, CPU, quiet=True)
    assert "restarting from scratch" in (tmp_path / "log.txt").read_text()
    assert [r["epoch"] for r in metrics(tmp_path)] == [0, 1, 2]


def test_damaged_metrics_line_is_refilled_from_the_log_on_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(epochs=2), a, CPU, quiet=True)
    train_run(small(epochs=1), b, CPU, quiet=True)
    lines = (b / "metrics.jsonl").read_text().splitlines()
    (b / "metrics.jsonl").write_text(lines[0][:40] + "\n" + lines[1] + "\n")  # epoch 0 garbled
    train_run(small(epochs=2), b, CPU, quiet=True)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in metrics(a)]
    assert metrics(b) == strip
    assert "metrics.jsonl:1: damaged line skipped" in (b / "log.txt").read_text()


def test_divergence_stops_the_run_and_the_sweep_goes_on(tmp_path):
    bad = RunSpec(small(experiment="fc-relu", model={"act": "relu"}, lr=1e6), tmp_path / "bad")
    good = RunSpec(small(epochs=1), tmp_path / "good")
    outcomes = run_sweep([bad, good], device="cpu", quiet=True)
    assert outcomes["diverged"] == 1 and outcomes["done"] == 1
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    assert config["status"] == "diverged" and config["diverged_epoch"] == 1
    # Diverged runs count as finished: a second sweep skips both.
    assert run_sweep([bad, good], device="cpu", quiet=True)["skipped"] == 2


def test_finished_runs_are_skipped_and_shards_partition(tmp_path):
    specs = [RunSpec(small(epochs=1, seed=s), tmp_path / f"seed{s}") for s in range(5)]
    shards = [select_shard(specs, (i, 3)) for i in range(3)]
    assert [[s.config.seed for s in part] for part in shards] == [[0, 3], [1, 4], [2]]
    run_sweep(shards[1], device="cpu", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed1", "seed4"]
    mtime = (tmp_path / "seed1" / "metrics.jsonl").stat().st_mtime_ns
    outcomes = run_sweep(specs, device="cpu", quiet=True)
    assert outcomes["skipped"] == 2 and outcomes["done"] == 3
    assert (tmp_path / "seed1" / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_a_folder_with_other_settings_is_refused(tmp_path):
    from mltools.errors import UsageError

    run_sweep([RunSpec(small(epochs=1), tmp_path)], device="cpu", quiet=True)
    with pytest.raises(UsageError, match="other settings"):
        run_sweep([RunSpec(small(epochs=1, lr=0.5), tmp_path)], device="cpu", quiet=True)


def test_locks_live_busy_and_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert runlog.acquire_lock(run)
    assert not runlog.acquire_lock(run)  # held by this live process
    runlog.release_lock(run)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (run / "run.lock").write_text(f"{dead} {os.uname().nodename}\n")
    assert runlog.acquire_lock(run)  # stale lock taken over
    assert (run / "run.lock").read_text().split()[0] == str(os.getpid())
    runlog.release_lock(run)
    (run / "run.lock").write_text(f"{os.getpid()} {os.uname().nodename}\n")
    assert run_sweep([RunSpec(small(epochs=1), run)], device="cpu", quiet=True)["busy"] == 1


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    """After pre-emption SLURM restarts the same job id, maybe on another node: its old lock
    (from a process that cannot still run) is taken over; another job's lock is not."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "4242_7")
    (run / "run.lock").write_text("12345 other-node 4242_8\n")
    assert not runlog.acquire_lock(run)  # another array task, on a host we cannot check
    (run / "run.lock").write_text("12345 other-node 4242_7\n")
    assert runlog.acquire_lock(run)
    assert (run / "run.lock").read_text().split() == [
        str(os.getpid()),
        os.uname().nodename,
        "4242_7",
    ]
    # The same job on this node with its process alive (two sweeps in one allocation): busy.
    assert not runlog.acquire_lock(run)


def sweep_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        "fc-tanh",
        "--seeds",
        "1",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path):
    # Reference: the same sweep, never interrupted.
    subprocess.run(sweep_cmd(tmp_path / "ref"), check=True, capture_output=True, cwd=ROOT)
    out = tmp_path / "killed"
    run_dir = out / "best_practices" / "fc-tanh" / "seed0"
    proc = subprocess.Popen(
        sweep_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for epoch 1 to finish, then kill inside epoch 2
        metrics_file = run_dir / "metrics.jsonl"
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert json.loads((run_dir / "config.json").read_text())["status"] == "running"
    subprocess.run(sweep_cmd(out), check=True, capture_output=True, cwd=ROOT)
    assert metrics(run_dir) == metrics(tmp_path / "ref" / "best_practices" / "fc-tanh" / "seed0")
    assert "resumed from the checkpoint" in (run_dir / "log.txt").read_text()


def test_two_sweeps_on_one_folder_never_train_a_run_twice(tmp_path):
    cmds = [
        sweep_cmd(tmp_path, "--seeds", "3", "--epochs", "1", "--shard", shard)
        for shard in ("0/1", "0/1")
    ]
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in cmds
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    for seed in range(3):
        run_dir = tmp_path / "best_practices" / "fc-tanh" / f"seed{seed}"
        log = (run_dir / "log.txt").read_text()
        assert log.count("start fc-tanh") == 1, log
        assert [r["epoch"] for r in metrics(run_dir)] == [0, 1]
        assert not (run_dir / "run.lock").exists()


def test_jobs_run_in_parallel_processes(tmp_path, capsys):
    specs = [RunSpec(small(epochs=1, seed=s), tmp_path / f"seed{s}") for s in range(3)]
    outcomes = run_sweep(specs, device="cpu", jobs=2, quiet=True)
    assert outcomes["done"] == 3
    # Progress, one plain line per run here: the workers' epochs reached the parent, so the
    # first line already has an ETA.
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("sweep: ")]
    assert [x.split(",")[0] for x in lines] == [
        "sweep: 1/3 runs",
        "sweep: 2/3 runs",
        "sweep: 3/3 runs",
    ]
    assert "left" in lines[0] and lines[-1].endswith("done")
    pids = {(tmp_path / f"seed{s}" / "log.txt").read_text().count("start") for s in range(3)}
    assert pids == {1}
    assert all(
        json.loads((tmp_path / f"seed{s}" / "config.json").read_text())["status"] == "done"
        for s in range(3)
    )


def test_unreadable_config_does_not_lose_the_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(epochs=2), a, CPU, quiet=True)
    run_sweep([RunSpec(small(epochs=1), b)], device="cpu", quiet=True)
    (b / "config.json").write_text('{"status": "do')  # torn write by some other tool
    outcomes = run_sweep([RunSpec(small(epochs=2), b)], device="cpu", quiet=True)
    assert outcomes["done"] == 1
    assert "resumed from the checkpoint of epoch 1" in (b / "log.txt").read_text()
    assert metrics(a) == metrics(b)


def test_cnn_2019_placement_and_input_side(tmp_path):
    """points="2019" leaves out the point before the output layer (3 points, as the 2019
    code's CNN); min_side sets the side small inputs are upsampled to (16 -> 64 features)."""
    from mltools.training.train import build_model

    ours = build_model(RunConfig(arch="cnn"), (1, 28, 28), 10)
    old = build_model(RunConfig(arch="cnn", model={"points": "2019"}), (1, 28, 28), 10)
    x = torch.zeros(2, 1, 28, 28)
    sizes = [p.h[0].numel() for p in dfatools_traces(old, x)]
    assert len(ours.feedback_points) == 4 and sizes == [32 * 15 * 15, 64 * 7 * 7, 64 * 3 * 3]
    small_side = build_model(RunConfig(arch="cnn", model={"min_side": 16}), (1, 8, 8), 10)
    linears = [m for m in small_side if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 64 * 1 * 1


def dfatools_traces(model, x):
    from dfatools.inspect import find_dfa, trace_points

    node = find_dfa(model)
    with node.backprop(), trace_points(model, node) as traces:
        model(x)
    return traces


def test_a_setting_added_later_takes_its_default_for_old_runs(tmp_path):
    """A run folder written before a setting existed is the same run when the setting is at its
    default, and another run otherwise."""
    from mltools.errors import UsageError
    from mltools.sweeps.sweep import plan

    run_sweep([RunSpec(small(epochs=1), tmp_path)], device="cpu", quiet=True)
    config = json.loads((tmp_path / runlog.CONFIG).read_text())
    del config["model"]["act"]
    (tmp_path / runlog.CONFIG).write_text(json.dumps(config))
    assert plan(RunSpec(small(epochs=1), tmp_path)) == "skip"
    with pytest.raises(UsageError, match=r"model\.act"):
        plan(RunSpec(small(epochs=1, model={"act": "relu"}), tmp_path))


def test_the_cuda_rng_state_restored_is_the_run_devices():
    """A checkpoint holds its run's CUDA RNG state (older ones: every device's, as a list); a
    CPU run restores none, and a device the list lacks gets none rather than a crash."""
    from mltools.runs.checkpoint import saved_cuda_rng

    one, two = torch.zeros(3, dtype=torch.uint8), torch.ones(3, dtype=torch.uint8)
    assert saved_cuda_rng({"cuda": one}, torch.device("cuda")) is one
    assert saved_cuda_rng({"cuda": one}, CPU) is None
    assert saved_cuda_rng({"cuda": None}, torch.device("cuda:0")) is None
    assert saved_cuda_rng({"cuda": [one, two]}, torch.device("cuda:1")) is two
    assert saved_cuda_rng({"cuda": [one]}, torch.device("cuda:1")) is None
