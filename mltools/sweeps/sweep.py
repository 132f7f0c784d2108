"""Run many runs: skip finished ones, resume interrupted ones, split with ``--shard``, spread
over processes and devices with ``--jobs``, show progress with an ETA, and never train one run
folder twice at once. ``--slurm`` hands the shards to :mod:`mltools.sweeps.slurm`."""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from mltools.errors import DiskFull, UsageError, disk_full
from mltools.runs import runlog
from mltools.runs.config import RunConfig, read
from mltools.sweeps import stopping
from mltools.sweeps.progress import SweepProgress


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


def _flat(settings: dict) -> dict:
    """``settings`` with the model's options as ``model.<name>`` keys, compared one by one."""
    model = settings.pop("model", {}) or {}
    return {**settings, **{f"model.{k}": v for k, v in model.items()}}


def plan(spec: RunSpec) -> str:
    """``skip`` (finished), ``run`` (new, interrupted, or to be extended to more epochs).

    Raises UsageError when the folder holds a run with other settings: two runs never share one.
    """
    config, _ = runlog.read_config(spec.run_dir)
    if config is None:
        return "run"  # new, or config unreadable: the checkpoint decides how far it got
    wanted = _flat(spec.config.settings())
    try:  # a setting added after the run was written had its default
        stored = _flat(read(config).settings())
    except ValueError as err:
        raise UsageError(
            f"{spec.run_dir}: {err}; use another --out or delete that folder"
        ) from None
    # A constant rate can train on; a decaying schedule is laid out over the run's epochs.
    extensible = {"epochs"} if spec.config.recipe.schedule == "constant" else set()
    differ = sorted(k for k, v in wanted.items() if k not in extensible and stored.get(k) != v)
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
    import torch  # here, so that `import mltools.sweeps.sweep` stays light in the parent process

    if threads:
        torch.set_num_threads(threads)
    try:
        return train_locked(spec, device, quiet, bars, on_epoch)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one broken run must not stop a sweep of hundreds
        from mltools.training import distributed

        if distributed.launched():
            raise  # under torchrun: the ranks' collectives would no longer match; torchrun stops
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

    from mltools.training import distributed
    from mltools.training.device import resolve_device
    from mltools.training.train import train_run

    spec.run_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun the ranks train each run together: rank 0 holds the lock and decides.
    main = distributed.is_main()
    locked = runlog.acquire_lock(spec.run_dir) if main else True
    if not distributed.share(locked):
        if main:
            print(f"{spec.label}: busy (another process is training {spec.run_dir}), skipped")
        return "busy"
    try:
        if distributed.share(plan(spec) if main else None) == "skip":
            return "skipped"  # another sweep finished it since this one started
        resolved = resolve_device(device)
        if resolved.index is not None:
            torch.cuda.set_device(resolved)  # else CUDA also opens a context on cuda:0
        return train_run(
            spec.config, spec.run_dir, resolved, quiet=quiet, bars=bars, on_epoch=on_epoch
        )
    finally:
        if main:
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
    from mltools.training import distributed

    outcomes: Counter = Counter()
    todo = []
    # Under torchrun every rank trains the same runs: rank 0's plan is everyone's.
    plans = distributed.share([plan(spec) for spec in specs] if distributed.is_main() else None)
    for spec, planned in zip(specs, plans):
        if planned == "skip":
            outcomes["skipped"] += 1
            if distributed.is_main():
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
    from mltools.reports.board import EVENTS_GLOB, export

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


STOP_GRACE_S = 30  # how long a stopping sweep waits for a worker to stop its run


@dataclass
class Worker:
    """One worker process, the parent's end of its pipe, its device and the run it trains."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    device: str
    run: int | None = None  # index into the sweep's runs; None while idle


def start_worker(ctx, device: str, threads: int | None) -> Worker:
    """A worker process on ``device``, started with the stop signals held (stopping.held)."""
    parent_end, worker_end = ctx.Pipe()
    process = ctx.Process(target=work, args=(worker_end, os.getpid(), device, threads), daemon=True)
    with stopping.held():
        process.start()
    worker_end.close()  # the worker holds the only other end: its exit reads as end of file
    return Worker(process, parent_end, device)


def work(conn: Connection, parent: int, device: str, threads: int | None) -> None:
    """A worker's life: receive ``(k, spec, quiet)``, train it, send ``(k, outcome, message)``
    (``message``: a full disk's, else ``""``), and ``(k, "epoch", "")`` after each epoch.

    Ends when the parent closes the pipe, or dies (a broken pipe), or a stop signal arrives:
    from the parent, from the kernel when the parent dies, or from whoever signalled every
    process of the sweep. Then the run in hand stops as on Ctrl-C, and the parent is told
    ``(None, "stopped", "SIGTERM")``.
    """
    try:
        stopping.follow_parent(parent)
        while True:
            k, spec, quiet = conn.recv()
            try:
                outcome = run_one(
                    spec, device, quiet, threads, False, functools.partial(report_epoch, conn, k)
                )
                message = ""
            except DiskFull as err:
                outcome, message = "failed", str(err)
            conn.send((k, outcome, message))
    except stopping.Stopped as stop:
        with contextlib.suppress(OSError):  # the parent may be gone
            conn.send((None, "stopped", stop.name))
    except (EOFError, BrokenPipeError):
        pass  # no parent left to work for
    stopping.ignore_stops()
    # The interpreter's last garbage collection walks every object torch made, for seconds on
    # a busy machine; they are freed at exit all the same.
    gc.freeze()


def report_epoch(conn: Connection, k: int) -> None:
    """Tell the parent that run ``k`` finished an epoch."""
    try:
        conn.send((k, "epoch", ""))
    except OSError:  # the parent is gone; its death signal may come a moment later
        stopping.stop(signal.SIGTERM)


def receive(w: Worker, todo: list[RunSpec]) -> tuple[int | None, str, str]:
    """The next message of worker ``w``; ``(w.run, "died", "")`` when it died (say the OOM
    killer), saying so when it held a run."""
    try:
        return w.conn.recv()
    except EOFError:
        w.process.join(5)
        w.conn.close()
        if w.run is not None:
            spec = todo[w.run]
            print(
                f"{spec.label}: failed: its worker process ended (exit code "
                f"{w.process.exitcode}); see {spec.run_dir / runlog.LOG}",
                flush=True,
            )
        return w.run, "died", ""


def stop_workers(workers: list[Worker]) -> None:
    """End every worker: an idle one reads the end of its pipe and exits; a busy one gets
    SIGTERM and stops its run as on Ctrl-C (killed after STOP_GRACE_S)."""
    for w in workers:
        if w.run is not None and w.process.is_alive():
            w.process.terminate()
        else:
            w.conn.close()
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.exitcode is None:
            print(
                f"worker {w.process.pid} did not stop within {STOP_GRACE_S}s: killed",
                file=sys.stderr,
                flush=True,
            )
            w.process.kill()
            w.process.join()
        w.conn.close()


def run_parallel(
    todo: list[RunSpec],
    device: str,
    jobs: int,
    quiet: bool,
    outcomes: Counter,
    progress: SweepProgress,
) -> None:
    """:func:`run_sweep` over ``jobs`` worker processes, adding to ``outcomes``.

    A run is handed to a worker only when it is free, so that after a full disk no further run
    starts. Each worker keeps one device and reports over its pipe after each epoch; the parent
    moves the progress. However this function ends (all done, a full disk, Ctrl-C, SIGTERM,
    SIGHUP, submitit's requeue), its workers have stopped; if this process is killed, they stop
    by themselves (docs/stopping.md). A worker that dies (say the OOM killer) fails its run, and
    a new one takes the next.
    """
    spread = devices_for(device, jobs)
    # CPU workers share the cores; on a GPU each worker's few CPU ops keep torch's default.
    threads = max(1, (os.cpu_count() or 1) // jobs) if spread == ["cpu"] else None
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    waiting = collections.deque(enumerate(todo))
    stop: DiskFull | None = None
    workers: list[Worker] = []
    try:
        for i in range(min(jobs, len(todo))):
            workers.append(start_worker(ctx, spread[i % len(spread)], threads))
        while True:
            for w in workers:
                if w.run is None and stop is None and waiting:
                    k, spec = waiting.popleft()
                    w.run = k
                    with contextlib.suppress(BrokenPipeError):  # it died: its end of file follows
                        w.conn.send((k, spec, quiet))
            if all(w.run is None for w in workers):
                break
            for conn in multiprocessing.connection.wait([w.conn for w in workers]):
                w = next(x for x in workers if x.conn is conn)
                k, event, message = receive(w, todo)
                if event == "epoch":
                    progress.epoch(k)
                    continue
                if event == "stopped":  # a stop signal reached the worker: the sweep stops too
                    stopping.stop(signal.Signals[message])
                    continue  # already stopping: its end of file follows
                if event == "died":
                    workers.remove(w)
                    if waiting and stop is None:
                        workers.append(start_worker(ctx, w.device, threads))
                    if k is None:
                        continue
                    event = "failed"
                w.run = None
                if message:
                    stop = stop or DiskFull(message)
                outcomes[event] += 1
                progress.run_done(k, event)
    finally:
        stop_workers(workers)
    if stop is not None:
        raise SweepStopped(str(stop), outcomes)


def check_inputs(device: str, specs: list[RunSpec]) -> None:
    """Fail early, with one line, on a device, dataset (the first run's) or recipe the runs
    could not use."""
    from mltools.data.datasets import DataError
    from mltools.training import distributed
    from mltools.training.device import resolve_device
    from mltools.training.train import check_recipe, get_data

    try:
        for spec in specs:
            check_recipe(spec.config)
        resolved = resolve_device(device)
        # Under torchrun, rank 0 downloads (--download) before the others read.
        if distributed.is_main():
            get_data(specs[0].config, resolved)
        distributed.barrier()
        if not distributed.is_main():
            get_data(specs[0].config, resolved)
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
        trust_checkpoints=args.trust_checkpoints,
        tensorboard=args.tensorboard,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        recipe=settings["recipe"],
    )


def recipes_line(specs: list[RunSpec]) -> str:
    """The recipes of a sweep's runs, e.g. ``recipe sgd (SGD, ...)``, each once."""
    used = dict.fromkeys(s.config.recipe.describe() for s in specs)
    return f"recipe{'s' if len(used) > 1 else ''} " + "; ".join(used)


def describe(settings: dict) -> str:
    """One line naming the resolved preset settings of a sweep."""
    samples = (
        f", first {settings['train_samples']} training samples" if settings["train_samples"] else ""
    )
    schedule = f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']}"
    if settings.get("choices"):  # a per-method preset: each experiment its own
        source = f"per experiment ({settings['choices']})"
        if settings["epochs"]:  # --epochs given: one for all, the lr still each its own
            schedule = f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {source}"
        else:
            schedule = f"batch {settings['batch_size']}, lr and epochs {source}"
    seeds = f"{settings['seeds']} seed(s)"
    if settings.get("cnn_seeds", settings["seeds"]) != settings["seeds"]:
        seeds += f" ({settings['cnn_seeds']} for the CNN)"
    return f"{settings['preset']} preset: {settings['dataset']}, {seeds}, {schedule}{samples}"
