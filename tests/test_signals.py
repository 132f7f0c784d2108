"""Stopping a sweep (issue 21): SIGTERM stops it as Ctrl-C does, a killed parent's workers stop
by themselves, submitit's requeue still works, and in every case the same command finishes the
runs with an uninterrupted sweep's metrics. Linux (/proc, PR_SET_PDEATHSIG)."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "stop_signals", ROOT / "benchmarks" / "stop_signals.py"
)
stop_signals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stop_signals)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")

WAIT = 180  # seconds: a bound on every wait, generous for a loaded 2-core machine
GONE = 15  # seconds after the signal by which no process of the sweep may be left


def finish(out: Path, jobs: int) -> subprocess.CompletedProcess:
    """The same command again, to the end."""
    cmd = stop_signals.sweep_command(out, jobs)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=WAIT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Every run's records from uninterrupted sweeps, by --jobs (1 and 2 use other thread
    counts, which may change the last digits)."""
    found = {}
    for jobs in (1, 2):
        out = tmp_path_factory.mktemp(f"reference{jobs}")
        result = finish(out, jobs)
        assert result.returncode == 0, result.stderr
        found[jobs] = stop_signals.all_records(out)
        assert [r["epoch"] for r in found[jobs]["fc-tanh"]] == list(range(stop_signals.EPOCHS + 1))
    return found


def start_and_wait(out: Path, jobs: int, cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd``, a sweep into ``out``, in its own session; return once every run under way
    has recorded epoch 1 and is a moment into epoch 2."""
    proc = stop_signals.start(cmd, out.with_name(out.name + "-stopped"))
    stop_signals.wait_for_epochs(stop_signals.under_way(out, jobs), 2, WAIT)
    time.sleep(0.2)
    return proc


@pytest.mark.parametrize(
    "jobs, signum, code",
    [(2, signal.SIGKILL, -signal.SIGKILL), (2, signal.SIGTERM, 143), (1, signal.SIGTERM, 143)],
)
def test_a_stopped_sweep_leaves_no_process_and_resumes_equal(
    tmp_path, reference, jobs, signum, code
):
    out = tmp_path / "out"
    proc = start_and_wait(out, jobs, stop_signals.sweep_command(out, jobs))
    alive = stop_signals.session_processes(proc.pid)
    assert len(alive) >= 1 + (jobs if jobs > 1 else 0), alive  # parent (+ workers, tracker)
    exit_code, gone = stop_signals.stop(proc, signum, False, GONE)
    assert gone <= GONE, stop_signals.session_processes(proc.pid)
    assert exit_code == code
    err = (tmp_path / "out-stopped.err").read_text()
    if signum == signal.SIGTERM:
        assert "stopped by SIGTERM" in err and "Run the same command again to resume" in err
        assert "Traceback" not in err
    for d in stop_signals.under_way(out, jobs):
        # Even with the parent killed, its workers stopped their runs cleanly.
        assert "interrupted" in (d / "log.txt").read_text()
    assert not any((d / "run.lock").exists() for d in stop_signals.run_dirs(out))
    again = finish(out, jobs)
    assert again.returncode == 0, again.stderr
    assert stop_signals.all_records(out) == reference[jobs]
    for d in stop_signals.under_way(out, jobs):
        assert "resumed from the checkpoint" in (d / "log.txt").read_text()


def workers_of(proc: subprocess.Popen) -> list[int]:
    return [
        pid
        for pid in stop_signals.session_processes(proc.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_a_killed_worker_fails_its_run_and_the_sweep_goes_on(tmp_path, reference):
    """The OOM killer's case: one worker gets SIGKILL; its run fails, the other finishes."""
    out = tmp_path / "out"
    proc = start_and_wait(out, 2, stop_signals.sweep_command(out, 2))
    workers = workers_of(proc)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=WAIT) == 1  # a run failed
    printed = (tmp_path / "out-stopped.out").read_text()
    assert "failed: its worker process ended (exit code -9)" in printed
    assert "runs: 1 done, 1 failed" in printed
    again = finish(out, 2)
    assert again.returncode == 0 and "runs: 1 done" in again.stdout, again.stdout
    assert stop_signals.all_records(out) == reference[2]


def test_sigterm_to_one_worker_stops_the_sweep(tmp_path, reference):
    """What scancel or systemd do (SIGTERM to every process), reaching a worker first."""
    out = tmp_path / "out"
    proc = start_and_wait(out, 2, stop_signals.sweep_command(out, 2))
    os.kill(workers_of(proc)[0], signal.SIGTERM)
    exit_code, gone = stop_signals.stop(proc, 0, False, GONE)  # signal 0: only watch
    assert exit_code == 143 and gone <= GONE
    assert "stopped by SIGTERM" in (tmp_path / "out-stopped.err").read_text()
    for d in stop_signals.run_dirs(out):
        assert "interrupted" in (d / "log.txt").read_text()
    assert finish(out, 2).returncode == 0
    assert stop_signals.all_records(out) == reference[2]


def test_under_nohup_a_hangup_stops_nothing(tmp_path, reference):
    """nohup ignores SIGHUP so that a sweep outlives its terminal: the parent and its workers
    keep ignoring it."""
    out = tmp_path / "out"
    proc = start_and_wait(out, 2, ["nohup", *stop_signals.sweep_command(out, 2)])
    os.killpg(proc.pid, signal.SIGHUP)  # the terminal closes
    assert proc.wait(timeout=WAIT) == 0, (tmp_path / "out-stopped.err").read_text()
    assert stop_signals.all_records(out) == reference[2]
    assert not any("interrupted" in (d / "log.txt").read_text() for d in stop_signals.run_dirs(out))


def test_submitit_requeue_still_works_with_jobs(tmp_path, reference):
    """--slurm local --jobs 2: submitit's pre-emption signal (SIGUSR2) to the task requeues it
    (our SIGTERM handling does not swallow it); the requeued task resumes both runs."""
    out = tmp_path / "out"
    proc = start_and_wait(out, 2, stop_signals.sweep_command(out, 2, ("--slurm", "local")))
    (task,) = [
        pid
        for pid in stop_signals.session_processes(proc.pid)
        if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(task, signal.SIGUSR2)
    assert proc.wait(timeout=WAIT) == 0, (tmp_path / "out-stopped.err").read_text()
    assert "runs: 2 done" in (tmp_path / "out-stopped.out").read_text()
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.*"))
    assert "Requeued job" in logs
    assert stop_signals.all_records(out) == reference[2]
    for d in stop_signals.run_dirs(out):
        log = (d / "log.txt").read_text()
        assert "interrupted" in log and "resumed from the checkpoint" in log
    deadline = time.monotonic() + GONE
    while stop_signals.session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stop_signals.session_processes(proc.pid)


PR_GET_PDEATHSIG = 2
CHILD = f"""
import ctypes, os, sys
from mltools.sweeps import stopping
parent = int(sys.argv[1])
try:
    stopping.follow_parent(parent)
except stopping.Stopped as err:
    print("stopped", err.signum)
    sys.exit()
sig = ctypes.c_int()
ctypes.CDLL(None).prctl({PR_GET_PDEATHSIG}, ctypes.byref(sig), 0, 0, 0)
print("death signal", sig.value)
"""


def test_a_worker_gets_sigterm_when_its_parent_dies():
    ours = subprocess.run(
        [sys.executable, "-c", CHILD, str(os.getpid())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert ours.stdout.split() == ["death", "signal", str(int(signal.SIGTERM))], ours.stderr


def test_a_worker_whose_parent_is_already_gone_stops():
    """The race: the parent died before the death signal was set. The worker's parent is then
    another process than the one named, and it stops at once."""
    gone = subprocess.run(
        [sys.executable, "-c", CHILD, str(os.getpid() + 10**6)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert gone.stdout.split() == ["stopped", str(int(signal.SIGTERM))], gone.stderr
