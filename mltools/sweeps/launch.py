"""What both experiment scripts do once their runs are listed: check the inputs, train the
shard here (:mod:`mltools.sweeps.sweep`) or as a submitit array (:mod:`mltools.sweeps.slurm`),
then write the report. The one module that knows both ways, so neither imports the other."""

from __future__ import annotations

import sys
from pathlib import Path

from mltools.errors import UsageError, writable_dir, write_or_stop
from mltools.sweeps.sweep import (
    RunSpec,
    SweepStopped,
    check_inputs,
    plan,
    run_sweep,
    select_shard,
    summarize,
)


def execute(specs: list[RunSpec], args, headline: str, write_report, report_command: str) -> int:
    """What both experiment scripts do: check inputs, train the shard (here, or as a submitit
    array with ``--slurm``), write the report; ``report_command`` writes it again later.

    Exit code 1 when a run failed (the others still ran), 0 otherwise. Raises DiskFull (exit
    code 1, one line) when a run or the report hit a full disk: the sweep stops there.
    """
    from mltools.training import distributed

    if distributed.launched():  # torchrun: one run at a time, on every process together
        if args.slurm or args.jobs > 1 or args.shard:
            raise UsageError(
                "under torchrun every process trains the same run: --jobs, --shard and --slurm "
                "do not apply (docs/paper-study.md)"
            )
        args.device = distributed.start(args.device)
        args.quiet = args.quiet or not distributed.is_main()
    try:
        return _execute(specs, args, headline, write_report, report_command)
    finally:
        distributed.stop()


def _execute(specs: list[RunSpec], args, headline: str, write_report, report_command: str) -> int:
    from mltools.training import distributed

    say = print if distributed.is_main() else (lambda *_, **__: None)
    if args.tensorboard:
        from mltools.reports.board import require

        require()
    if args.slurm:
        from mltools.sweeps import slurm  # imported here: a plain sweep needs no submitit

        slurm.check(args)
        for spec in specs:
            plan(spec)  # a folder holding other settings: one line now, not a failure per task
    # Under --slurm the tasks get their own devices (a login node may have no GPU): check the
    # data only.
    check_inputs("cpu" if args.slurm else args.device, specs)
    writable_dir(args.out)  # only once the inputs are known good: bad input writes nothing
    world = f", {distributed.world_size()} processes each" if distributed.launched() else ""
    say(f"{headline}, {len(specs)} runs in all{world}", flush=True)
    if args.slurm:
        jobs, _ = slurm.submit(specs, args, Path(sys.argv[0]).stem or "sweep", report_command)
        if args.slurm == "slurm":
            return 0  # the cluster trains them; report_command reports them
        outcomes = slurm.wait(jobs)
    else:
        try:
            outcomes = run_sweep(
                select_shard(specs, args.shard), args.device, args.jobs, args.quiet
            )
        except SweepStopped as stop:
            say(summarize(stop.outcomes), flush=True)
            raise
        say(summarize(outcomes), flush=True)
    if not distributed.is_main():
        return 1 if outcomes["failed"] else 0
    try:
        write_or_stop(write_report, Path(args.out))
    except UsageError as err:  # e.g. every run diverged: nothing to tabulate, the runs are kept
        print(f"no report: {err}", flush=True)
    return 1 if outcomes["failed"] else 0
