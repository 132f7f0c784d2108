"""Sweep progress, TensorBoard event files and the submitit path (``--slurm local``)."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fresh_interpreter import run_script

from mltools.runs import runlog
from mltools.sweeps import stopping
from mltools.sweeps.progress import SweepProgress, format_seconds
from mltools.sweeps.sweep import RunSpec, run_sweep
from mltools.training.train import RunConfig, train_run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# -- progress --------------------------------------------------------------------------------------
def test_progress_counts_and_eta_from_epoch_times():
    clock, lines = Clock(), []
    progress = SweepProgress([4, 4, 3, 4], bar=False, echo=lines.append, every=2, clock=clock)
    for _ in range(4):
        clock.now += 2.0
        progress.epoch(0)
    progress.run_done(0, "done")
    assert lines == []  # every 2 runs
    clock.now += 2.0
    progress.epoch(1)  # diverged after one epoch: its other 3 epochs leave the total
    progress.run_done(1, "diverged")
    # 5 epochs in 10 s; 7 epochs left (runs 2 and 3): 14 s.
    assert progress.epochs_left == 7 and progress.eta() == pytest.approx(14.0)
    assert lines == ["sweep: 2/4 runs (1 diverged), 10s elapsed, about 14s left"]
    progress.epoch(2)
    progress.run_done(2, "failed")
    progress.run_done(3, "busy")  # another process trained it
    assert lines[-1] == "sweep: 4/4 runs (1 diverged, 1 failed), 10s elapsed, done"
    assert progress.epochs_left == 0


def test_progress_grows_when_a_run_resumes_further_back():
    progress = SweepProgress([1], bar=False, echo=lambda _: None)
    progress.epoch(0)
    progress.epoch(0)
    assert progress.epochs_left == 0 and progress.expected == [2]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


# -- TensorBoard -----------------------------------------------------------------------------------
def small(**changes) -> RunConfig:
    base = dict(
        experiment="fc-tanh",
        epochs=2,
        batch_size=64,
        lr=0.02,
        train_samples=256,
        eval_samples=128,
        tensorboard=True,
    )
    return RunConfig(**{**base, **changes})


def read_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run folder's event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check_events_match_metrics(run_dir: Path) -> None:
    records = [json.loads(x) for x in (run_dir / runlog.METRICS).read_text().splitlines()]
    events = read_events(run_dir)
    epochs = [r["epoch"] for r in records]
    expected = {
        "loss/train": "train_loss",
        "top1/train": "train_top1",
        "loss/eval": "eval_loss",
        "top1/eval": "eval_top1",
        "time/epoch_s": "time_s",
    }
    for tag, key in expected.items():
        assert [s for s, _ in events[tag]] == epochs, tag  # each epoch once, in order
        assert [v for _, v in events[tag]] == pytest.approx([r[key] for r in records], rel=1e-6)
    points = len(records[0]["alignment"])
    for p in range(points):
        cos = [r["alignment"][p]["cos_mean"] for r in records]
        assert [v for _, v in events[f"alignment/cos_mean/h{p + 1}"]] == pytest.approx(
            cos, rel=1e-5
        )
        wcos = [r["alignment"][p]["weight_cos"] for r in records if r["epoch"] > 0]
        assert [v for s, v in events[f"alignment/weight_cos/h{p + 1}"] if s > 0] == pytest.approx(
            wcos, rel=1e-5
        )
    mean = [sum(a["cos_mean"] for a in r["alignment"]) / points for r in records]
    assert [v for _, v in events["alignment/cos_mean/mean"]] == pytest.approx(
        mean, rel=1e-5, abs=1e-7
    )


def test_tensorboard_events_match_metrics_across_a_resume(tmp_path):
    run = tmp_path / "run"
    train_run(small(epochs=1), run, CPU, quiet=True)
    check_events_match_metrics(run)
    # A crash after epoch 2 was logged but before its checkpoint: the run resumes at epoch 2
    # and logs it again. The curves must still hold each step once.
    train_run(small(epochs=2), run, CPU, quiet=True)
    (run / runlog.CHECKPOINT).unlink()
    (run / runlog.PREVIOUS_CHECKPOINT).rename(run / runlog.CHECKPOINT)  # epoch 1's
    lines = (run / runlog.METRICS).read_text().splitlines()
    train_run(small(epochs=3), run, CPU, quiet=True)
    assert "resumed from the checkpoint of epoch 1" in (run / "log.txt").read_text()
    check_events_match_metrics(run)
    assert [json.loads(x)["epoch"] for x in (run / runlog.METRICS).read_text().splitlines()] == [
        0,
        1,
        2,
        3,
    ]
    assert len(lines) == 3


def test_tensorboard_hparams_name_the_settings(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    train_run(small(epochs=1, lr=0.03), run, CPU, quiet=True)
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["lr"].number_value == pytest.approx(0.03)
    assert info.hparams["experiment"].string_value == "fc-tanh"
    assert info.hparams["train_samples"].number_value == 256
    assert info.hparams["eval_samples"].number_value == 128
    assert "tensorboard" not in info.hparams and "data_dir" not in info.hparams


def test_a_finished_run_gets_its_events_when_asked_later(tmp_path):
    run = tmp_path / "run"
    train_run(small(epochs=1, tensorboard=False), run, CPU, quiet=True)
    assert not list(run.glob("events.out.tfevents.*"))
    outcomes = run_sweep([RunSpec(small(epochs=1), run)], device="cpu", quiet=True)
    assert outcomes["skipped"] == 1
    check_events_match_metrics(run)
    # Extended by a sweep without the flag: the next sweep with it brings the curves up to date.
    run_sweep([RunSpec(small(epochs=2, tensorboard=False), run)], device="cpu", quiet=True)
    assert run_sweep([RunSpec(small(epochs=2), run)], device="cpu", quiet=True)["skipped"] == 1
    check_events_match_metrics(run)
    assert [s for s, _ in read_events(run)["top1/eval"]] == [0, 1, 2]


# -- submitit --------------------------------------------------------------------------------------
def sweep(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        "fc-tanh",
        "fc-relu",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--train-samples",
        "256",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def runs_of(out: Path) -> dict[str, list[dict]]:
    found = {}
    for metrics in sorted((out / "best_practices").glob("*/seed*/metrics.jsonl")):
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
        for r in records:
            r.pop("time_s")
        found[str(metrics.parent.relative_to(out))] = records
    return found


def summary_of(out: Path) -> list[dict]:
    with open(out / "best_practices" / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_slurm_local_gives_the_plain_sweep(tmp_path):
    plain = sweep(tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    array = sweep(tmp_path / "array", "--slurm", "local", "--slurm-array", "2")
    assert array.returncode == 0, array.stderr
    assert "submitted 2 shard(s) of 4 runs as local submitit jobs" in array.stdout
    assert "runs: 4 done" in array.stdout
    assert runs_of(tmp_path / "array") == runs_of(tmp_path / "plain")
    assert len(runs_of(tmp_path / "plain")) == 4
    assert summary_of(tmp_path / "array") == summary_of(tmp_path / "plain")
    # Submitting again: every run is found finished, nothing is trained twice.
    again = sweep(tmp_path / "array", "--slurm", "local", "--slurm-array", "2")
    assert again.returncode == 0 and "runs: 4 skipped" in again.stdout


def test_slurm_submission_script(tmp_path):
    """The SLURM path up to sbatch, with stand-ins for srun and sbatch: the array's width, the
    --slurm-* options as #SBATCH lines, the job id and the report command printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/job.sbatch\necho "Submitted batch job 4321"\n'
    )
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        "fc-tanh",
        "fc-relu",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--slurm",
        "--slurm-partition",
        "gpu",
        "--slurm-gpus",
        "1",
        "--slurm-cpus",
        "4",
        "--slurm-array",
        "3",
        "--slurm-time",
        "90",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "submitted 3 shard(s) of 4 runs as SLURM job array 4321" in result.stdout
    assert f"python best_practices.py --report-only --out {tmp_path / 'out'}" in result.stdout
    lines = set((tmp_path / "job.sbatch").read_text().splitlines())
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=90",
        "#SBATCH --job-name=best_practices",
    ):
        assert line in lines
    # SLURM's warning before pre-emption or the time limit goes to the task, which requeues;
    # the workers of --jobs must leave that signal to it (tests/test_signals.py).
    (warning,) = [x for x in lines if x.startswith("#SBATCH --signal=")]
    name = warning.split("=")[1].split("@")[0]
    assert getattr(signal, f"SIG{name}") in stopping.PARENTS_SIGNALS
    assert not (tmp_path / "out" / "best_practices").exists()  # nothing trained here


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--slurm"], "sbatch"),
        (["--slurm", "local", "--shard", "0/2"], "drop --shard"),
    ],
)
def test_slurm_errors_are_one_line(tmp_path, extra, message):
    # A PATH without sbatch, so that a cluster login node never submits a real job here.
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    cmd = [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        "fc-tanh",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_plain_sweep_imports_neither_library(tmp_path):
    proc, code, modules = run_script(
        "best_practices.py",
        "--experiments",
        "fc-tanh",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--train-samples",
        "64",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path / "out"),
        report=tmp_path / "run.json",
    )
    assert code == 0, proc.stderr
    assert not {m.split(".")[0] for m in modules} & {"tensorboard", "submitit", "tensorboardX"}
    assert "torch.utils.tensorboard" not in modules


def test_a_failed_local_task_is_one_line_and_counted(tmp_path, capsys):
    import functools

    import submitit

    from mltools.sweeps.slurm import wait

    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="local")
    executor.update_parameters(timeout_min=2)
    jobs = [
        executor.submit(functools.partial(os.mkdir, str(tmp_path / "no" / "such" / "dir"))),
        executor.submit(functools.partial(dict, done=2)),
    ]
    assert wait(jobs) == {"failed": 1, "done": 2}
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"task {jobs[0].job_id} failed: FileNotFoundError: [Errno 2]")
    assert out[1] == "runs: 2 done, 1 failed"
