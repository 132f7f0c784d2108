"""A full disk fails the run it hits (status failed, earlier files intact) and stops the sweep
there with one line, instead of failing every later run; the same command then resumes."""

import argparse
import errno
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_train import small as train_small

from mltools import errors
from mltools.reports.best_practices import write_best_practices_report
from mltools.runs import runlog
from mltools.sweeps.launch import execute
from mltools.sweeps.sweep import RunSpec, SweepStopped, run_sweep
from mltools.training.train import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def small(**changes) -> RunConfig:
    """A one-epoch run on 128 samples: only its writes matter here."""
    return train_small(**{"epochs": 1, "train_samples": 128, **changes})


class FullDiskFile:
    """A file on a full disk: a write puts part of its data, then fails with ``code``."""

    def __init__(self, file, code: int) -> None:
        self.file, self.code = file, code

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def full_disk(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Writes to run-folder files called ``name`` (or to their atomic temp files) fail as on a
    full disk. runlog opens every file of a run folder, checkpoints included."""

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        target = Path(path).name
        if mode.startswith("r") or not (target == name or target.startswith(f".{name}.")):
            return file
        return FullDiskFile(file, code)

    monkeypatch.setattr(runlog, "open", open_on_full_disk, raising=False)


def status(run_dir: Path) -> str | None:
    config, _ = runlog.read_config(run_dir)
    return None if config is None else config["status"]


@pytest.mark.parametrize(
    "name, code",
    [
        (runlog.CHECKPOINT, errno.ENOSPC),
        (runlog.METRICS, errno.EDQUOT),
        (runlog.LOG, errno.EIO),
        (runlog.CONFIG, errno.EFBIG),
    ],
)
def test_full_disk_stops_the_sweep_after_the_first_run(tmp_path, monkeypatch, capsys, name, code):
    specs = [RunSpec(small(seed=seed), tmp_path / f"seed{seed}") for seed in range(3)]
    full_disk(monkeypatch, name, code)
    with pytest.raises(SweepStopped) as stop:
        run_sweep(specs, device="cpu", quiet=True)
    assert stop.value.outcomes == Counter(failed=1)
    assert not specs[1].run_dir.exists() and not specs[2].run_dir.exists()  # never started
    message = str(stop.value)
    assert "\n" not in message and str(specs[0].run_dir) in message and os.strerror(code) in message
    assert "--out" in message and "run the same command again" in message
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("fc-tanh seed0: failed: OSError")
    run_dir = specs[0].run_dir
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / runlog.LOCK).exists()
    # The run is marked failed wherever config.json itself could still be written.
    assert status(run_dir) == (None if name == runlog.CONFIG else "failed")


def test_after_a_full_disk_the_same_sweep_resumes(tmp_path, monkeypatch):
    """Extending a run to 2 epochs on a full disk: the checkpoint of epoch 2 fails, the files of
    epochs 0-1 stay, and once there is room the same sweep resumes from epoch 1."""
    run_dir = tmp_path / "seed0"
    run_sweep([RunSpec(small(), run_dir)], device="cpu", quiet=True)
    epoch1 = (run_dir / runlog.CHECKPOINT).read_bytes()
    full_disk(monkeypatch, runlog.CHECKPOINT)
    with pytest.raises(SweepStopped):
        run_sweep([RunSpec(small(epochs=2), run_dir)], device="cpu", quiet=True)
    assert status(run_dir) == "failed"
    assert (run_dir / runlog.PREVIOUS_CHECKPOINT).read_bytes() == epoch1
    records, _ = runlog.read_json_lines(run_dir / runlog.METRICS)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    monkeypatch.undo()
    assert run_sweep([RunSpec(small(epochs=2), run_dir)], device="cpu", quiet=True)["done"] == 1
    assert "resumed from the checkpoint of epoch 1" in (run_dir / runlog.LOG).read_text()
    records, warnings = runlog.read_json_lines(run_dir / runlog.METRICS)
    assert [r["epoch"] for r in records] == [0, 1, 2] and warnings == []


def test_full_disk_while_writing_the_report_is_one_line(tmp_path, monkeypatch, capsys):
    specs = [RunSpec(small(), tmp_path / "best_practices" / "fc-tanh" / "seed0")]
    args = argparse.Namespace(
        device="cpu",
        out=str(tmp_path),
        shard=None,
        jobs=1,
        quiet=True,
        slurm=None,
        tensorboard=False,
    )
    write_text = Path.write_text

    def report_on_full_disk(path, *args, **kwargs):
        if path.suffix in (".md", ".csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", report_on_full_disk)
    with pytest.raises(errors.DiskFull) as stop:
        execute(
            specs,
            args,
            "test",
            write_best_practices_report,
            "python best_practices.py --report-only",
        )
    assert "runs: 1 done" in capsys.readouterr().out
    message = str(stop.value)
    assert "\n" not in message and str(tmp_path / "best_practices") in message
    assert status(specs[0].run_dir) == "done"  # the runs are not touched


@pytest.mark.parametrize("code", sorted(errors.DISK_ERRNOS))
def test_disk_errors_stop_and_others_do_not(code):
    stop = errors.disk_full(OSError(code, os.strerror(code)), "results/x")
    assert isinstance(stop, errors.DiskFull) and "results/x" in str(stop)
    named = errors.disk_full(OSError(code, os.strerror(code), "results/x/log.txt"), "results")
    assert "results/x/log.txt" in str(named)
    for other in (
        OSError(errno.EACCES, "Permission denied"),
        FileNotFoundError(2, "gone"),
        ValueError("not a disk error"),
    ):
        assert errors.disk_full(other, "results") is None


def test_parallel_sweep_on_a_size_limited_disk_stops_with_exit_1(tmp_path):
    """ulimit -f: every checkpoint is too large (EFBIG) in the worker processes of --jobs 2.
    The runs already started fail; the others never start; one line says what to do."""
    limit = 256 * 1024  # room for configs, logs and metrics, not for a checkpoint
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv = ['best_practices.py'] + sys.argv[1:]; "
        "runpy.run_path('best_practices.py', run_name='__main__')"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--experiments",
            "fc-tanh",
            "--seeds",
            "6",
            "--epochs",
            "1",
            "--train-samples",
            "128",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--jobs",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("best_practices.py: stopped: cannot write")
    assert os.strerror(errno.EFBIG) in errors[0]
    started = sorted((tmp_path / "best_practices" / "fc-tanh").glob("seed*"))
    assert len(started) == 2  # one per worker: no run starts after the first failed
    assert all(status(run_dir) == "failed" for run_dir in started)
    assert "failed" in proc.stdout.splitlines()[-1]  # the summary line
