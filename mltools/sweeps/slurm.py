"""A sweep as a SLURM job array, through submitit (``--slurm``); ``--slurm local`` runs the same
path with submitit's local executor (a laptop, the tests).

Each array task trains one shard of the sweep, as ``--shard I/N`` would: the same run folders,
locks and resume logic, so submitting again skips finished runs and resumes interrupted ones.
A task that SLURM pre-empts or times out is requeued by submitit (:meth:`ShardTask.checkpoint`)
and resumes its interrupted run from that run's last checkpoint. submitit is imported only here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mltools.errors import UsageError
from mltools.sweeps.sweep import RunSpec, run_sweep, select_shard, summarize

ROOT = Path(__file__).resolve().parents[2]  # so that array tasks can import mltools
MAX_ARRAY = 64  # default array width on SLURM: one task per run up to this many


@dataclass
class ShardTask:
    """The callable each array task runs: shard ``index`` of ``count`` of ``specs``."""

    specs: list[RunSpec]
    device: str
    jobs: int

    def __call__(self, index: int, count: int) -> dict[str, int]:
        return dict(
            run_sweep(select_shard(self.specs, (index, count)), self.device, self.jobs, quiet=True)
        )

    def checkpoint(self, index: int, count: int):
        """Called by submitit on pre-emption or time-out: requeue the same shard. The run folders
        hold the state (finished runs are skipped, the interrupted one resumes)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, index, count)


def array_width(args, runs: int) -> int:
    """``--slurm-array``, else one task per run up to MAX_ARRAY on SLURM and 1 locally (the local
    executor starts every task at once)."""
    wanted = args.slurm_array or (MAX_ARRAY if args.slurm == "slurm" else 1)
    return max(1, min(wanted, runs))


def executor_parameters(args, width: int, name: str) -> dict:
    """submitit's AutoExecutor parameters from the --slurm-* flags."""
    params = {"name": name, "timeout_min": args.slurm_time}
    if args.slurm_gpus is not None:
        params["gpus_per_node"] = args.slurm_gpus
    if args.slurm_cpus is not None:
        params["cpus_per_task"] = args.slurm_cpus
    if args.slurm == "slurm":
        params["slurm_array_parallelism"] = width
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
    return params


def check(args) -> None:
    """UsageError for a --slurm request that cannot be submitted, before anything is written."""
    if args.shard is not None:
        raise UsageError("--slurm splits the sweep into shards itself; drop --shard")
    if args.slurm == "slurm" and shutil.which("sbatch") is None:
        raise UsageError(
            "--slurm needs SLURM's sbatch, not found here; --slurm local runs the "
            "same array on this machine"
        )
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError("--slurm needs submitit: pip install -r requirements.txt") from None


def submit(specs: list[RunSpec], args, name: str, report_command: str) -> tuple[list, int]:
    """Submit ``specs`` as an array of shards; returns the submitit jobs and the array width."""
    import submitit

    width = array_width(args, len(specs))
    folder = Path(args.out) / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=args.slurm)
    executor.update_parameters(**executor_parameters(args, width, name))
    # Tasks unpickle ShardTask by reference: they must find mltools wherever they start.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    jobs = executor.map_array(
        ShardTask(specs, args.device, args.jobs), range(width), [width] * width
    )
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
    where = "SLURM job array" if args.slurm == "slurm" else "local submitit jobs"
    print(
        f"submitted {width} shard(s) of {len(specs)} runs as {where} {', '.join(ids)}; "
        f"logs in {folder}",
        flush=True,
    )
    if args.slurm == "slurm":
        print(f"when they have finished: {report_command}", flush=True)
    return jobs, width


def task_error(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback submitit reports, else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt):", line)
    ]
    return errors[-1] if errors else (lines[0] if lines else "unknown error")


def wait(jobs: list) -> Counter:
    """Wait for local jobs; their outcomes added up. A task that failed as a whole (a full disk,
    a crash) is one line and one ``failed`` count; the others' runs are still reported. Stopping
    this command cancels the tasks."""
    outcomes: Counter = Counter()
    try:
        for job in jobs:
            try:
                outcomes.update(job.result())
            except Exception as err:  # submitit's error holds the task's traceback
                print(
                    f"task {job.job_id} failed: {task_error(str(err))} (see {job.paths.stderr})",
                    flush=True,
                )
                outcomes["failed"] += 1
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the local tasks stop with this command
        for job in jobs:
            job.cancel(check=False)  # SIGINT: each task stops its run as on Ctrl-C
        raise
    print(summarize(outcomes), flush=True)
    return outcomes
