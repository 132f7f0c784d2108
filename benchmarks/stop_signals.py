"""What each way of stopping a sweep does: the exit code, the seconds from the signal until no
process the sweep started is left, and whether the same command run again gives every run the
metrics of an uninterrupted sweep (docs/stopping.md).

    python benchmarks/stop_signals.py              # --jobs 2: SIGINT, SIGTERM, SIGHUP, SIGKILL
    python benchmarks/stop_signals.py --jobs 1
    python benchmarks/stop_signals.py --slurm-local  # the same through submitit's local array

Each sweep starts in its own session and is stopped once every run has recorded epoch 1, a
moment into epoch 2. Its processes (parent, workers, multiprocessing's resource tracker) are
found by session id in /proc, wherever they were re-parented. Linux only. tests/test_signals.py
measures the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("fc-tanh", "fc-relu")
# Each sweep is stopped after epoch 1: the epochs after it are the margin within which the stop
# must land. With 2 epochs a machine twice as fast as ours finished the runs first (CI, 2026-12).
EPOCHS = 6
# (label, signal, to the whole process group as a terminal sends it, or to the parent only)
CASES = (
    ("SIGINT to the parent", signal.SIGINT, False),
    ("Ctrl-C (SIGINT to the group)", signal.SIGINT, True),
    ("SIGTERM to the parent", signal.SIGTERM, False),
    ("SIGHUP to the parent", signal.SIGHUP, False),
    ("terminal closed (SIGHUP to the group)", signal.SIGHUP, True),
    ("SIGKILL to the parent", signal.SIGKILL, False),
)


def sweep_command(out: Path, jobs: int, extra: tuple[str, ...] = ()) -> list[str]:
    """Two small digits runs (fc-tanh, fc-relu), one per worker with ``--jobs 2``, ``EPOCHS``
    epochs of about half a second each; ``extra``: more flags."""
    return [
        sys.executable,
        str(ROOT / "best_practices.py"),
        "--experiments",
        *EXPERIMENTS,
        "--seeds",
        "1",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--quiet",
        "--jobs",
        str(jobs),
        "--out",
        str(out),
        *extra,
    ]


def run_dirs(out: Path) -> list[Path]:
    return [out / "best_practices" / name / "seed0" for name in EXPERIMENTS]


def under_way(out: Path, jobs: int) -> list[Path]:
    """The runs trained at once: both with ``--jobs 2``, else one after the other (the last)."""
    return run_dirs(out) if jobs > 1 else run_dirs(out)[-1:]


def all_records(out: Path) -> dict[str, list[dict]]:
    """Each run's epoch records, by experiment, without wall times (which legitimately differ
    between runs)."""
    found = {}
    for run_dir in run_dirs(out):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        found[run_dir.parent.name] = [
            {k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines
        ]
    return found


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes of session ``sid`` (zombies are gone but for their entry)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        state, _, _, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state not in "ZX":
            found.append(int(entry.name))
    return found


def start(cmd: list[str], logs: Path) -> subprocess.Popen:
    """``cmd`` in a new session (its id is its pid), stdout and stderr to ``logs``.out/.err,
    with SIGHUP as a terminal leaves it even when this runs under nohup (which ignores it)."""
    with open(logs.with_suffix(".out"), "w") as out, open(logs.with_suffix(".err"), "w") as err:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        )


def wait_for_epochs(dirs: list[Path], lines: int, timeout: float) -> None:
    """Until every run's metrics.jsonl holds ``lines`` records; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [d / "metrics.jsonl" for d in dirs]
        if all(f.exists() and f.read_text().count("\n") >= lines for f in files):
            return
        time.sleep(0.05)
    raise TimeoutError(f"runs under {dirs[0].parents[1]} did not reach {lines} records")


def stop(proc: subprocess.Popen, signum: int, group: bool, timeout: float) -> tuple[int, float]:
    """Send ``signum`` to ``proc`` (or its process group); its exit code and the seconds until
    no process of its session was left (``inf`` if some still were after ``timeout``)."""
    tic = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, signum)
    gone = float("inf")
    while time.monotonic() - tic < timeout:
        proc.poll()  # reap the parent: a zombie is gone but for its entry
        if not session_processes(proc.pid):
            gone = time.monotonic() - tic
            break
        time.sleep(0.05)
    return proc.wait(timeout=max(1.0, timeout - (time.monotonic() - tic))), gone


def measure(
    out: Path,
    jobs: int,
    extra: tuple[str, ...],
    signum: int,
    group: bool,
    reference: dict,
    timeout: float,
) -> dict:
    """Start the sweep, stop it a moment into epoch 2, time the end of its processes, run the
    same command again, and compare every run's records with ``reference``."""
    proc = start(sweep_command(out, jobs, extra), out.with_name(out.name + "-stopped"))
    wait_for_epochs(under_way(out, jobs), 2, timeout)
    time.sleep(0.2)
    code, gone = stop(proc, signum, group, timeout)
    err = out.with_name(out.name + "-stopped.err").read_text()
    locks = sum((d / "run.lock").exists() for d in run_dirs(out))
    again = subprocess.run(
        sweep_command(out, jobs, extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10 * timeout,
    )
    return dict(
        code=code,
        gone=gone,
        hint="run the same command again" in err.lower(),
        locks=locks,
        resumed=difference(again, out, reference),
    )


def difference(again: subprocess.CompletedProcess, out: Path, reference: dict) -> str:
    """``yes`` when the command run again ended well with the reference's records, else what
    differed first: its exit code, a run's number of records, or an epoch's keys."""
    if again.returncode != 0:
        return f"NO (exit code {again.returncode}: {again.stderr.strip()[-200:]})"
    found = all_records(out)
    for name, expected in reference.items():
        got = found.get(name, [])
        if len(got) != len(expected):
            return f"NO ({name}: {len(got)} records, {len(expected)} expected)"
        for a, b in zip(got, expected):
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            if keys:
                return f"NO ({name} epoch {b['epoch']}: {', '.join(keys)})"
    return "yes"


def reference_records(out: Path, jobs: int, timeout: float) -> dict:
    subprocess.run(
        sweep_command(out, jobs), cwd=ROOT, check=True, capture_output=True, timeout=10 * timeout
    )
    return all_records(out)


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--slurm-local", action="store_true", help="stop `--slurm local` sweeps instead"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    args = parser.parse_args()
    extra = ("--slurm", "local") if args.slurm_local else ()
    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_records(Path(tmp) / "reference", args.jobs, args.timeout)
        flags = " ".join(sweep_command(Path("OUT"), args.jobs, extra)[2:])
        print(
            f"`{' '.join(['python benchmarks/stop_signals.py', *sys.argv[1:]])}` on {cpu_name()} "
            f"({os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.1f} at the start; "
            f"each sweep: `python best_practices.py {flags}`\n"
        )
        print(
            "| stop | exit code | no process left after | resume hint | locks left "
            "| resumed metrics equal |"
        )
        print("|---|---|---|---|---|---|")
        for k, (label, signum, group) in enumerate(CASES):
            out = Path(tmp) / f"case{k}"
            r = measure(out, args.jobs, extra, signum, group, reference, args.timeout)
            print(
                f"| {label} | {r['code']} | {r['gone']:.1f} s | {'yes' if r['hint'] else 'no'} "
                f"| {r['locks']} | {r['resumed']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
