"""The one training loop, for every method (DFA, BP, FA, sign, DRTP, shallow) alike, writing a run
folder (DESIGN.md 6).

A run resumes from its checkpoint after a crash and produces the same metrics, number for
number on CPU, as an uninterrupted run: the checkpoint holds the model, the optimizer, the
data-order generator and every RNG state.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import dfatools
from mltools.data.datasets import Dataset, iterate_batches, load_dataset
from mltools.data.text import TEXT_DATASETS, load_text
from mltools.models import architectures, networks
from mltools.models.stream_norm import StreamNorm
from mltools.runs import recipes, runlog
from mltools.runs.checkpoint import load_checkpoint, restore, save_checkpoint, write_torch
from mltools.runs.config import RunConfig
from mltools.training import distributed

ALIGNMENT_SAMPLES = 128  # the alignment batch: the first 128 evaluation samples (DESIGN.md 3)
EVAL_BATCH = 256  # on a CPU, 1000-sample conv batches run ~35% slower per sample (cache)
SAMPLE_PROMPT = 32  # a language model's samples continue the evaluation text's first characters
SAMPLE_LENGTH = 300  # characters sampled after the prompt


# -- building blocks ------------------------------------------------------------------------------
def build_net(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[torch.nn.Module, dict]:
    """The plain network, and the ``to_dfa`` keywords that place its feedback
    (:func:`mltools.models.networks.build`)."""
    return networks.build(cfg, input_shape, num_classes)


def build_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The network of ``cfg`` trained by its method."""
    net, placement = build_net(cfg, input_shape, num_classes)
    if "error_at" in placement and cfg.method == "drtp":
        raise ValueError("drtp projects the class targets: it takes no error_at")
    width = placement.pop("num_classes", num_classes)
    # Every method keeps the DFA model's feedback points, where alignment is measured.
    return dfatools.to_method(
        net,
        cfg.method,
        width,
        normalize=cfg.normalize,
        positions=cfg.positions,
        seed=cfg.seed,
        **placement,
    )


def bottleneck_layout(cfg: RunConfig) -> dict:
    """``point_blocks``: the hidden block each feedback point reads (0 = h1, see
    :func:`networks.point_blocks`), and ``bottleneck_point``: the index of the point right after
    the bottleneck layer. Recorded in config.json so reports line up networks of other points.
    """
    net, placement = build_net(cfg, (1, 1, 1), 2)  # the layout only
    blocks = networks.point_blocks(net, placement.get("points"))
    return {"point_blocks": blocks, "bottleneck_point": blocks.index(networks.BOTTLENECK_BLOCK)}


def check_recipe(cfg: RunConfig) -> None:
    """ValueError for a recipe the run cannot honour: weight decay would move the entries that
    a mask-mode bottleneck layer keeps at their initial value (DESIGN.md 5)."""
    mask = isinstance(cfg.model, architectures.BottleneckOptions) and cfg.model.mode == "mask"
    if mask and cfg.recipe.weight_decay:
        raise ValueError(
            "weight decay would move the frozen entries of the mask-mode bottleneck layer; "
            "use --weight-decay 0 or --mode width"
        )


def check_slices(samples: int, batch_size: int, world: int) -> None:
    """ValueError when a batch, the last one included, has fewer samples than the ``world``
    data-parallel ranks that share it: a rank would get an empty slice."""
    last = samples % batch_size or batch_size
    if min(batch_size, last) < world:
        raise ValueError(
            f"{samples} training samples in batches of {batch_size} leave a batch of "
            f"{min(batch_size, last)}, fewer than the {world} processes that share each batch; "
            "change --batch-size or --train-samples"
        )


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean loss and top-1 (percent) per target in eval mode: over images ``x`` ``(N, C, H,
    W)`` with labels ``y`` ``(N,)``, or over every position of text windows ``(N, T)``."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), EVAL_BATCH):
        out = model(x[start : start + EVAL_BATCH])
        target = y[start : start + EVAL_BATCH]
        loss += F.cross_entropy(out.flatten(0, -2), target.flatten(), reduction="sum")
        correct += (out.argmax(-1) == target).sum()
    return loss.item() / y.numel(), 100.0 * correct.item() / y.numel()


def train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    data: Dataset,
    cfg: RunConfig,
    order: torch.Generator,
    bar: tqdm,
    step_model: torch.nn.Module | None = None,
) -> tuple[float, float]:
    """One pass over the training set, the schedule stepped after every batch; mean loss and
    top-1 (percent), one host sync at the end.

    ``step_model``: what runs the forward pass, ``model`` itself or, under torchrun, ``model``
    in ``DistributedDataParallel``: each rank then takes its slice of every batch
    (:func:`distributed.part`), its loss weighted by its share of the batch's targets so that
    DDP's average of the ranks' gradients is the gradient of the whole batch's mean loss.
    """
    model.train()
    step_model = step_model or model
    world = distributed.world_size()
    x, y = data.x_train, data.y_train
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    mode = dfatools.backprop(model) if cfg.method == "bp" else contextlib.nullcontext()
    with mode:
        for batch in iterate_batches(len(y), cfg.batch_size, order, x.device):
            idx = distributed.part(batch)
            out = step_model(x[idx])
            loss = dfatools.cross_entropy(out, y[idx])  # every position a sample
            opt.zero_grad(set_to_none=True)
            model.feedback.set_target(y[idx])  # DRTP's learning signal; ignored by other methods
            share = y[idx].numel() * world / (y[batch].numel())  # 1 in one process
            (loss * share if share != 1 else loss).backward()
            if cfg.recipe.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.recipe.clip)
            opt.step()
            sched.step()
            loss_sum += loss.detach() * y[idx].numel()
            correct += (out.detach().argmax(-1) == y[idx]).sum()
            bar.update(1)
    distributed.all_sum(loss_sum)
    distributed.all_sum(correct)
    return loss_sum.item() / y.numel(), 100.0 * correct.item() / y.numel()


def alignment(model, data: Dataset) -> list[dict]:
    xa, ya = data.x_eval[:ALIGNMENT_SAMPLES], data.y_eval[:ALIGNMENT_SAMPLES]
    return [a.to_dict() for a in dfatools.measure_alignment(model, xa, ya)]


@torch.no_grad()
def sample_text(model: torch.nn.Module, data: Dataset, seed: int) -> str:
    """The evaluation text's first SAMPLE_PROMPT characters and SAMPLE_LENGTH more, sampled
    one at a time from the model's softmax by a generator seeded by ``seed``: every run of a
    study continues the same prompt."""
    vocab = data.vocab or ""
    tokens = data.x_eval[:1, :SAMPLE_PROMPT]
    context = data.x_eval.shape[1]
    gen = torch.Generator(device=tokens.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    for _ in range(SAMPLE_LENGTH):
        logits = model(tokens[:, -context:])[0, -1]
        nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)
        tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    model.train(was_training)
    return "".join(vocab[int(i)] for i in tokens[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# -- resume -------------------------------------------------------------------------------------
def kept_records(run_dir: Path, last_epoch: int, log: runlog.RunLog) -> list[dict]:
    """Records of epochs 0..last_epoch, from metrics.jsonl, filled from log.txt where damaged."""
    records, warnings = runlog.read_json_lines(run_dir / runlog.METRICS)
    if (run_dir / runlog.LOG).exists():
        from_log, _ = runlog.parse_log((run_dir / runlog.LOG).read_text(errors="replace"))
        merged = {r["epoch"]: r for r in from_log}
    else:
        merged = {}
    merged.update({r["epoch"]: r for r in records})
    for w in warnings:
        log.write(f"warning: {w}")
    missing = [e for e in range(last_epoch + 1) if e not in merged]
    if missing:
        log.write(f"warning: no metrics left for epochs {missing}")
    return [merged[e] for e in sorted(merged) if e <= last_epoch]


# -- provenance -----------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` prints it (e.g. ``Intel(R) Xeon(R) Processor``);
    the machine type where the system does not say."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "dfatools": dfatools.__version__,
        },
        "git_commit": git_commit(),
        "pid": os.getpid(),  # which process trained the run last (sweeps with --jobs)
        # CPU results depend on these (the order of floating-point sums, the kernels chosen);
        # the thread count is set by OMP_NUM_THREADS.
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "world_size": distributed.world_size(),  # processes of a data-parallel run (torchrun)
    }


# -- the run --------------------------------------------------------------------------------------
_DATA_CACHE: dict[tuple, Dataset] = {}


def get_data(cfg: RunConfig, device: torch.device) -> Dataset:
    """The run's dataset, loaded once per process and shared by the runs of a sweep."""
    key = (
        cfg.dataset,
        cfg.data_dir,
        cfg.eval_split,
        cfg.train_samples,
        cfg.eval_samples,
        cfg.text,
        cfg.context,
        str(device),
    )
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset on the device at a time
        if cfg.dataset in TEXT_DATASETS:
            _DATA_CACHE[key] = load_text(
                cfg.dataset,
                cfg.text,
                cfg.context,
                cfg.eval_split,
                cfg.train_samples,
                cfg.eval_samples,
                device,
            )
            return _DATA_CACHE[key]
        _DATA_CACHE[key] = load_dataset(
            cfg.dataset,
            cfg.data_dir,
            download=cfg.download,
            eval_split=cfg.eval_split,
            train_samples=cfg.train_samples,
            eval_samples=cfg.eval_samples,
            device=device,
        )
    return _DATA_CACHE[key]


def record_line(cfg: RunConfig, record: dict, split: str) -> str:
    """A compact console line for one epoch."""
    cos = " ".join(f"{a['cos_mean']:+.2f}" for a in record["alignment"])
    bpc = f" bpc {record['eval_bpc']:.3f}" if "eval_bpc" in record else ""
    return (
        f"{cfg.experiment} seed{cfg.seed} epoch {record['epoch']}/{cfg.epochs}: "
        f"train {record['train_top1']:.2f}% {split} {record['eval_top1']:.2f}%{bpc} "
        f"cos [{cos}] ({record['time_s']:.1f}s)"
    )


def train_run(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    quiet: bool = False,
    bars: bool = True,
    on_epoch: Callable[[], None] | None = None,
) -> str:
    """Train (or resume) the run in ``run_dir``; returns its final status (done or diverged).

    ``on_epoch`` is called after each epoch is recorded (a sweep's progress). The caller holds
    the run's lock. Exceptions propagate after the status is set to failed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under torchrun, rank 0 alone writes the folder and prints
    show = not quiet and main
    log = runlog.RunLog(run_dir, enabled=main)
    config = {**asdict(cfg), **provenance(device), "status": "running", "diverged_epoch": None}
    if cfg.arch == "bottleneck":
        config.update(bottleneck_layout(cfg))
    write_config = runlog.write_config if main else lambda *_: None
    write_config(run_dir, config)
    try:
        status = _train(
            cfg, run_dir, device, log, show, bars and show and sys.stderr.isatty(), on_epoch
        )
    except KeyboardInterrupt:
        log.write("interrupted; the same command resumes from the last finished epoch")
        raise
    except Exception as err:
        config.update(status="failed", error=f"{type(err).__name__}: {err}")
        write_config(run_dir, config)
        log.write(f"failed: {type(err).__name__}: {err}")
        raise
    config.update(status=status[0], diverged_epoch=status[1])
    write_config(run_dir, config)
    distributed.barrier()  # the status is on disk before any rank plans the next run
    return status[0]


class Trainer:
    """One run's model, optimizer and data order, stepping through epochs and writing its folder.

    ``start()`` resumes from the checkpoint or starts fresh (with PAI when asked) and returns
    the first epoch to run; ``epoch(e)`` runs epoch ``e`` (0 = evaluation before training) and
    writes its record, log lines and checkpoint.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        device: torch.device,
        log: runlog.RunLog,
        show: bool = False,
        bars: bool = False,
    ) -> None:
        self.cfg, self.run_dir, self.device, self.log, self.bars = cfg, run_dir, device, log, bars
        self.main = distributed.is_main()  # writes the run folder (every rank trains)
        self.say = tqdm.write if show and self.main else (lambda line: None)
        self.data = get_data(cfg, device)
        seed_everything(cfg.seed)
        self.model = build_model(cfg, self.data.input_shape, self.data.num_classes).to(device)
        self.step_model = self.model  # under torchrun, in DistributedDataParallel
        if distributed.launched():
            check_slices(len(self.data.y_train), cfg.batch_size, distributed.world_size())
            from torch.nn.parallel import DistributedDataParallel

            self.step_model = DistributedDataParallel(
                self.model,
                device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=cfg.method == "shallow",  # its blocks get no gradient
            )
        check_recipe(cfg)
        self.opt = recipes.make_optimizer(cfg.recipe, self.model, cfg.lr)
        steps = cfg.epochs * math.ceil(len(self.data.y_train) / cfg.batch_size)
        self.sched = recipes.make_scheduler(cfg.recipe, self.opt, steps)
        self.plateau = recipes.make_plateau(cfg.recipe, self.opt)  # stepped once per epoch
        self.order = torch.Generator().manual_seed(cfg.seed)
        self.board = None  # mltools.reports.board.RunBoard with --tensorboard, from start()

    def start(self) -> int:
        """The first epoch to run: after the checkpoint's, or 0 (PAI applied when asked)."""
        first = self._start()
        if self.cfg.tensorboard and self.main:
            from mltools.reports.board import RunBoard

            records, _ = runlog.read_json_lines(self.run_dir / runlog.METRICS)
            self.board = RunBoard(self.run_dir, self.cfg.settings(), records)
        return first

    def _start(self) -> int:
        cfg, run_dir, log, data = self.cfg, self.run_dir, self.log, self.data
        state = load_checkpoint(run_dir, self.device, log, trust=cfg.trust_checkpoints)
        if state is not None:
            restore(state, self.model, self.opt, self.sched, self.order, self.device, self.plateau)
            if self.main:
                runlog.write_metrics(
                    run_dir / runlog.METRICS, kept_records(run_dir, state["epoch"], log)
                )
            log.write(f"resumed from the checkpoint of epoch {state['epoch']}")
            self.say(f"{cfg.experiment} seed{cfg.seed}: resumed after epoch {state['epoch']}")
            return state["epoch"] + 1
        if (run_dir / runlog.METRICS).exists() or (run_dir / runlog.LOG).exists():
            log.write("no usable checkpoint: restarting from scratch")
            self.say(
                f"{cfg.experiment} seed{cfg.seed}: no usable checkpoint, restarting from scratch"
            )
        if self.main:
            runlog.write_metrics(run_dir / runlog.METRICS, [])
        log.write(
            f"start {cfg.experiment} seed {cfg.seed}: {cfg.method.upper()} {cfg.arch} on "
            f"{cfg.dataset} ({len(data.y_train)} train, {len(data.y_eval)} "
            f"{data.eval_split}), device {self.device}"
        )
        if cfg.init == "pai":
            dfatools.prealign(
                self.model, data.x_train[: cfg.batch_size], data.y_train[: cfg.batch_size]
            )
            log.write("pre-alignment initialization (PAI) applied on the first training batch")
        return 0

    def epoch(self, epoch: int) -> dict:
        """Run and record one epoch; the record's ``train_loss`` is not finite when it diverged."""
        cfg, data, log = self.cfg, self.data, self.log
        tic = time.perf_counter()
        if epoch == 0:
            train_loss, train_top1 = evaluate(self.model, data.x_train, data.y_train)
        else:
            n_batches = math.ceil(len(data.y_train) / cfg.batch_size)
            with tqdm(
                total=n_batches,
                desc=f"{cfg.experiment} seed{cfg.seed} epoch {epoch}/{cfg.epochs}",
                disable=not self.bars,
                leave=False,
                file=sys.stderr,
            ) as bar:
                train_loss, train_top1 = train_epoch(
                    self.model, self.opt, self.sched, data, cfg, self.order, bar, self.step_model
                )
            if self.plateau is not None and math.isfinite(train_loss):
                # The training loss, never the evaluated split (the test set in a study).
                self.plateau.step(train_loss)
        record = {"epoch": epoch, "train_loss": train_loss, "train_top1": train_top1}
        if not math.isfinite(train_loss):
            record.update(
                eval_loss=None, eval_top1=None, time_s=time.perf_counter() - tic, alignment=[]
            )
            if self.main:
                runlog.append_metrics(self.run_dir, record)
            log.epoch(record, cfg.epochs)
            log.write(f"diverged at epoch {epoch}: training loss is {train_loss}")
            self.say(
                f"{cfg.experiment} seed{cfg.seed}: diverged at epoch {epoch} (loss {train_loss})"
            )
            return record
        with StreamNorm(self.model) as stream:
            record["eval_loss"], record["eval_top1"] = evaluate(
                self.model, data.x_eval, data.y_eval
            )
        if stream.blocks:
            record["stream_norm"] = stream.values()
        if data.vocab is not None:  # text: bits per character (DESIGN.md 13)
            record["train_bpc"] = train_loss / math.log(2)
            record["eval_bpc"] = record["eval_loss"] / math.log(2)
        record["alignment"] = alignment(self.model, data)
        record["time_s"] = time.perf_counter() - tic
        if self.main:
            runlog.append_metrics(self.run_dir, record)
        log.epoch(record, cfg.epochs)
        if self.main:
            if self.board is not None:
                self.board.add(record)
            save_checkpoint(
                self.run_dir,
                self.model,
                self.opt,
                self.sched,
                self.order,
                epoch,
                self.device,
                self.plateau,
            )
        self.say(record_line(cfg, record, data.eval_split))
        return record

    def finish(self) -> None:
        if not self.main:
            return
        write_torch(self.run_dir / runlog.MODEL, self.model.state_dict())
        if self.data.vocab is not None:
            text = sample_text(self.model, self.data, self.cfg.seed)
            runlog.fsync_write(self.run_dir / runlog.SAMPLES, text.encode("utf-8"))
        self.log.write("done")

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _train(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    log: runlog.RunLog,
    show: bool,
    bars: bool,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[str, int | None]:
    trainer = Trainer(cfg, run_dir, device, log, show, bars)
    try:
        for epoch in range(trainer.start(), cfg.epochs + 1):
            record = trainer.epoch(epoch)
            if on_epoch is not None:
                on_epoch()
            if not math.isfinite(record["train_loss"]):
                return "diverged", epoch
        trainer.finish()
        return "done", None
    finally:
        trainer.close()
