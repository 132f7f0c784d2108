"""Run many runs: skip finished ones, resume interrupted ones, split with ``--shard``, spread
over processes and devices with ``--jobs``, show progress with an ETA, and never train one run
folder twice at once. ``--slurm`` hands the shards to :mod:`mltools.slurm`."""

from __future__ import annotations

import concurrent.futures as futures
import functools
import multiprocessing
import os
import queue
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import runlog
from .cli import DiskFull, UsageError, disk_full, writable_dir, write_or_stop
from .progress import SweepProgress
from .train import RunConfig


@dataclass
class RunSpec:
    config: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.config.experiment} seed{self.config.seed}"


def select_shard(specs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Every N-th run starting at the I-th, for ``shard = (I, N)``."""
    if shard is None:
        return specs
    i, n = shard
    return specs[i::n]


def plan(spec: RunSpec) -> str:
    """``skip`` (finished), ``run`` (new, interrupted, or to be extended to more epochs).

    Raises UsageError when the folder holds a run with other settings: two runs never share one.
    """
    config, _ = runlog.read_config(spec.run_dir)
    if config is None:
        return "run"  # new, or config unreadable: the checkpoint decides how far it got
    wanted = spec.config.settings()
    defaults = RunConfig().settings()  # a setting added after the run was written had its default
    differ = sorted(
        k for k, v in wanted.items() if k != "epochs" and config.get(k, defaults.get(k)) != v
    )
    if differ:
        raise UsageError(
            f"{spec.run_dir} holds a run with other settings ({', '.join(differ)}); "
            "use another --out or delete that folder"
        )
    if config.get("status") == "diverged":
        return "skip"
    if config.get("status") == "done" and config.get("epochs", 0) >= spec.config.epochs:
        return "skip"
    return "run"


def epochs_left(spec: RunSpec) -> int:
    """Epochs the run still has to train: ``epochs + 1`` when new (epoch 0 evaluates), fewer
    after the last recorded one. An estimate for progress: the checkpoint decides."""
    records, _ = runlog.read_json_lines(spec.run_dir / runlog.METRICS)
    last = max((r["epoch"] for r in records if isinstance(r.get("epoch"), int)), default=-1)
    return max(1, spec.config.epochs - last)


def run_one(
    spec: RunSpec,
    device: str,
    quiet: bool,
    threads: int | None = None,
    bars: bool = True,
    on_epoch: Callable[[], None] | None = None,
) -> str:
    """Train one run under its lock; returns done, diverged, skipped, failed or busy.

    Raises DiskFull when the run failed because its folder could not be written: the sweep
    stops there rather than fail every later run the same way.
    """
    import torch  # here, so that `import mltools.sweep` stays light in the parent process

    if threads:
        torch.set_num_threads(threads)
    try:
        return train_locked(spec, device, quiet, bars, on_epoch)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one broken run must not stop a sweep of hundreds
        print(
            f"{spec.label}: failed: {type(err).__name__}: {err} (see {spec.run_dir / runlog.LOG})",
            flush=True,
        )
        stop = disk_full(err, spec.run_dir)
        if stop is not None:
            raise stop from None
        return "failed"


def train_locked(
    spec: RunSpec, device: str, quiet: bool, bars: bool, on_epoch: Callable[[], None] | None = None
) -> str:
    """Create the run folder, take its lock and train unless another process holds it."""
    import torch

    from .device import resolve_device
    from .train import train_run

    spec.run_dir.mkdir(parents=True, exist_ok=True)
    if not runlog.acquire_lock(spec.run_dir):
        print(
            f"{spec.label}: busy (another process is training {spec.run_dir}), skipped", flush=True
        )
        return "busy"
    try:
        if plan(spec) == "skip":  # another sweep finished it since this one started
            return "skipped"
        resolved = resolve_device(device)
        if resolved.index is not None:
            torch.cuda.set_device(resolved)  # else CUDA also opens a context on cuda:0
        return train_run(
            spec.config, spec.run_dir, resolved, quiet=quiet, bars=bars, on_epoch=on_epoch
        )
    finally:
        runlog.release_lock(spec.run_dir)


def devices_for(device: str, jobs: int) -> list[str]:
    """Devices to spread jobs over: every CUDA device when ``device`` is cuda/auto and several
    exist; ``auto`` is resolved here, so a CPU-only machine gets ``["cpu"]``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if jobs > 1 and device == "cuda" and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


class SweepStopped(DiskFull):
    """A run hit a full disk and the sweep stopped; ``outcomes`` counts the runs up to then."""

    def __init__(self, message: str, outcomes: Counter) -> None:
        super().__init__(message)
        self.outcomes = outcomes


def run_sweep(
    specs: list[RunSpec], device: str = "auto", jobs: int = 1, quiet: bool = False
) -> Counter:
    """Run every spec that is not finished; returns a count of outcomes (incl. ``skipped``).

    Shows a progress bar on a terminal, else (``quiet`` too) a plain line every few runs.
    Raises SweepStopped once a run failed on a full disk: no further run starts (with ``jobs``,
    the runs already started finish).
    """
    outcomes: Counter = Counter()
    todo = []
    for spec in specs:
        if plan(spec) == "skip":
            outcomes["skipped"] += 1
            export_board(spec)
        else:
            todo.append(spec)
    if specs and not quiet:
        print(f"{len(todo)} run(s) to train, {outcomes['skipped']} already finished", flush=True)
    if not todo:
        return outcomes
    terminal = not quiet and sys.stdout.isatty() and sys.stderr.isatty()
    # One run has its own epoch lines and bar: sweep progress starts at two.
    echo = functools.partial(print, flush=True) if len(todo) > 1 else (lambda _: None)
    progress = SweepProgress(
        [epochs_left(s) for s in todo], bar=terminal and len(todo) > 1, echo=echo
    )
    try:
        if jobs <= 1:
            run_serial(todo, device, quiet, outcomes, progress)
        else:
            run_parallel(todo, device, jobs, quiet, outcomes, progress)
    finally:
        progress.close()
    return outcomes


def export_board(spec: RunSpec) -> None:
    """With --tensorboard, the event file of a finished run that has none, or an older one than
    its metrics (trained, or extended, without the flag)."""
    if not spec.config.tensorboard:
        return
    from .board import EVENTS_GLOB, export

    events = [p.stat().st_mtime for p in spec.run_dir.glob(EVENTS_GLOB)]
    metrics = spec.run_dir / runlog.METRICS
    if not events or (metrics.exists() and metrics.stat().st_mtime > max(events)):
        export(spec.run_dir, spec.config.settings())


def run_serial(
    todo: list[RunSpec], device: str, quiet: bool, outcomes: Counter, progress: SweepProgress
) -> None:
    """The runs one after the other in this process, adding to ``outcomes``."""
    for k, spec in enumerate(todo):
        try:
            outcome = run_one(spec, device, quiet, on_epoch=functools.partial(progress.epoch, k))
        except DiskFull as stop:
            outcomes["failed"] += 1  # no progress line: the sweep stops, its summary follows
            raise SweepStopped(str(stop), outcomes) from None
        outcomes[outcome] += 1
        progress.run_done(k, outcome)


def run_parallel(
    todo: list[RunSpec],
    device: str,
    jobs: int,
    quiet: bool,
    outcomes: Counter,
    progress: SweepProgress,
) -> None:
    """:func:`run_sweep` over ``jobs`` worker processes, adding to ``outcomes``.

    A run is handed to a worker only when one is free, so that after a full disk no further
    run starts (a pool fed everything at once would have started queued runs already). Workers
    put the index of their run on a queue after each epoch; the parent moves the progress.
    """
    spread = devices_for(device, jobs)
    # CPU workers share the cores; on a GPU each worker's few CPU ops keep torch's default.
    threads = max(1, (os.cpu_count() or 1) // jobs) if spread == ["cpu"] else None
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    waiting = iter(enumerate(todo))
    stop: DiskFull | None = None
    with (
        ctx.Manager() as manager,
        futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool,
    ):
        epochs = manager.Queue()
        running: dict = {}
        try:
            while True:
                while len(running) < jobs and stop is None and (item := next(waiting, None)):
                    k, spec = item
                    running[
                        pool.submit(
                            run_one,
                            spec,
                            spread[k % len(spread)],
                            quiet,
                            threads,
                            False,
                            functools.partial(epochs.put, k),
                        )
                    ] = k
                if not running:
                    break
                done, _ = futures.wait(running, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                _drain(epochs, progress)
                for future in done:
                    k = running.pop(future)
                    try:
                        outcome = future.result()
                    except DiskFull as err:
                        outcome = "failed"
                        stop = stop or err
                    outcomes[outcome] += 1
                    progress.run_done(k, outcome)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if stop is not None:
        raise SweepStopped(str(stop), outcomes)


def _drain(epochs, progress: SweepProgress) -> None:
    """Move the progress by every epoch the workers reported so far."""
    while True:
        try:
            progress.epoch(epochs.get_nowait())
        except queue.Empty:
            return


def check_inputs(device: str, cfg: RunConfig) -> None:
    """Fail early, with one line, on a device or dataset (``cfg``'s) the runs could not use."""
    from .data import DataError
    from .device import resolve_device
    from .train import get_data

    try:
        resolved = resolve_device(device)
        get_data(cfg, resolved)
    except (ValueError, DataError) as err:
        raise UsageError(str(err)) from None


def summarize(outcomes: Counter) -> str:
    parts = [f"{n} {what}" for what, n in sorted(outcomes.items()) if n]
    return "runs: " + (", ".join(parts) if parts else "none selected")


def shared_settings(settings: dict, args) -> dict:
    """The RunConfig fields every run of a script's sweep shares (preset and flags resolved)."""
    return dict(
        dataset=settings["dataset"],
        data_dir=args.data_dir,
        download=args.download,
        eval_split=settings["eval_split"],
        train_samples=settings["train_samples"],
        eval_samples=settings["eval_samples"],
        cnn_min_side=settings["cnn_min_side"],
        trust_checkpoints=args.trust_checkpoints,
        tensorboard=args.tensorboard,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
    )


def describe(settings: dict) -> str:
    """One line naming the resolved preset settings of a sweep."""
    samples = (
        f", first {settings['train_samples']} training samples" if settings["train_samples"] else ""
    )
    schedule = f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']}"
    if settings.get("choices"):  # a per-method preset: each experiment its own
        schedule = (
            f"batch {settings['batch_size']}, lr and epochs per experiment "
            f"(mltools/{settings['choices']})"
        )
    seeds = f"{settings['seeds']} seed(s)"
    if settings.get("cnn_seeds", settings["seeds"]) != settings["seeds"]:
        seeds += f" ({settings['cnn_seeds']} for the CNN)"
    return f"{settings['preset']} preset: {settings['dataset']}, {seeds}, {schedule}{samples}"


def execute(specs: list[RunSpec], args, headline: str, write_report, report_command: str) -> int:
    """What both experiment scripts do: check inputs, train the shard (here, or as a submitit
    array with ``--slurm``), write the report; ``report_command`` writes it again later.

    Exit code 1 when a run failed (the others still ran), 0 otherwise. Raises DiskFull (exit
    code 1, one line) when a run or the report hit a full disk: the sweep stops there.
    """
    cfg = specs[0].config
    if args.tensorboard:
        from .board import require

        require()
    if args.slurm:
        from . import slurm

        slurm.check(args)
        for spec in specs:
            plan(spec)  # a folder holding other settings: one line now, not a failure per task
    # Under --slurm the tasks get their own devices (a login node may have no GPU): check the
    # data only.
    check_inputs("cpu" if args.slurm else args.device, cfg)
    writable_dir(args.out)  # only once the inputs are known good: bad input writes nothing
    print(f"{headline}, {len(specs)} runs in all", flush=True)
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
            print(summarize(stop.outcomes), flush=True)
            raise
        print(summarize(outcomes), flush=True)
    try:
        write_or_stop(write_report, Path(args.out))
    except UsageError as err:  # e.g. every run diverged: nothing to tabulate, the runs are kept
        print(f"no report: {err}", flush=True)
    return 1 if outcomes["failed"] else 0
