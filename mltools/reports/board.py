"""TensorBoard event files in a run folder (``--tensorboard``), through ``torch.utils.tensorboard``.

Each run folder gets its own event file, so ``tensorboard --logdir results`` shows a whole sweep,
one run per folder (``best_practices/fc-tanh/seed0``). Per epoch (the step): train and eval
loss and top-1, ``cos_mean`` and the weight cosine at every feedback point, the epoch time. The
run's settings go in as hparams, so the HParams tab compares experiments.

metrics.jsonl stays the record: the event file is rewritten from it whenever a run starts or
resumes, so a resumed run continues its curves with no step written twice (an epoch logged
after the last checkpoint and then re-run after a crash would otherwise appear twice), and a
sweep run before ``--tensorboard`` was given gets its curves too. The tensorboard package is
imported only here, when the flag is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from mltools.errors import UsageError
from mltools.reports.tables import config_point_blocks, on_blocks, point_label
from mltools.runs import runlog

EVENTS_GLOB = "events.out.tfevents.*"
# hparams metrics: the scalar tags the HParams tab shows next to each run's settings.
HPARAM_METRICS = ("top1/eval", "top1/train", "alignment/cos_mean/mean")


def scalars(record: dict) -> dict[str, float]:
    """The scalars of one epoch record (metrics.jsonl), by tag; missing and non-finite left out."""
    values = {
        "loss/train": record.get("train_loss"),
        "top1/train": record.get("train_top1"),
        "loss/eval": record.get("eval_loss"),
        "top1/eval": record.get("eval_top1"),
        "time/epoch_s": record.get("time_s"),
    }
    cos = []
    for a in record.get("alignment") or []:
        label = point_label(a["point"])
        values[f"alignment/cos_mean/{label}"] = a.get("cos_mean")
        values[f"alignment/weight_cos/{label}"] = a.get("weight_cos")
        cos.append(a.get("cos_mean"))
    if cos and all(isinstance(c, (int, float)) for c in cos):
        values["alignment/cos_mean/mean"] = sum(cos) / len(cos)
    return {
        tag: float(v)
        for tag, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def hparams(settings: dict) -> dict[str, int | float | str | bool]:
    """A run's settings as TensorBoard takes them: a nested setting (the recipe) as one entry
    per field, ``recipe.optimizer``; None becomes the string ``none``."""
    flat: dict = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{inner}": value for inner, value in v.items()})
        else:
            flat[k] = v
    return {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v).lower())
        for k, v in sorted(flat.items())
    }


def require() -> None:
    """UsageError, before any run starts, when the tensorboard package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(
            "--tensorboard needs the tensorboard package: pip install -r requirements.txt"
        ) from None


class RunBoard:
    """The event file of one run folder: opened with the epochs recorded so far, then one
    :meth:`add` per new epoch."""

    def __init__(self, run_dir: Path, settings: dict, records: Iterable[dict] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        run_dir = Path(run_dir)
        # Tags name the hidden layer a point reads (config's point_blocks), as the reports do:
        # the 2019 bottleneck network's two points are h2 and h3, not h1 and h2.
        self.blocks = config_point_blocks(runlog.read_config(run_dir)[0])
        for old in run_dir.glob(EVENTS_GLOB):
            old.unlink()  # rewritten below from metrics.jsonl, the record
        self.writer = SummaryWriter(log_dir=str(run_dir))
        for summary in hparams_summaries(hparams(settings), {m: 0.0 for m in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        for record in records:
            self.add(record)
        self.writer.flush()

    def add(self, record: dict) -> None:
        for tag, value in scalars(on_blocks(record, self.blocks)).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()  # a crash loses no logged epoch

    def close(self) -> None:
        self.writer.close()


def export(run_dir: Path, settings: dict) -> None:
    """Write the event file of a finished run from its metrics.jsonl (runs trained before
    ``--tensorboard`` was given)."""
    records, _ = runlog.read_json_lines(Path(run_dir) / runlog.METRICS)
    RunBoard(run_dir, settings, records).close()
