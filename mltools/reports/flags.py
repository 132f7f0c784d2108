"""The flags the reports raise on a run: not converged, unsteady, and (Transformers) a
residual stream that grows without bound; counted per experiment in :class:`Flags`.

* :func:`unconverged`: eval top-1 still rising at the last epoch (early stopping's rule);
* :func:`unsteady`: eval top-1 swinging by more than 1.5 points over the last 3 epochs;
* :func:`unbounded`: ``stream_norm`` after the last block growing more than 10x over the
  run's last half.

No torch and no pyplot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mltools.reports.tables import number
from mltools.runs.runlog import Run

RISE_LIMIT = 1.0  # convergence: a gain of the best eval top-1 (percentage points) ...
RISE_SPAN = 2  # ... within this many final epochs flags a run (early stopping's
# min_delta and patience)
SWING_LIMIT = 1.5  # steadiness: eval top-1 moving more than this (percentage points) ...
SWING_SPAN = 3  # ... over this many final epochs flags a run as unsteady
GROWTH_LIMIT = 10.0  # a residual stream growing more than this over a run's last half: unbounded


def unconverged(run: Run, record: dict) -> tuple[bool | None, float | None]:
    """The reports' convergence criterion: had ``run`` not converged at the epoch E of ``record``
    (its final record)?

    Early stopping's rule (patience RISE_SPAN = 2 epochs, min_delta RISE_LIMIT = 1 point): it had
    not when its best eval top-1 of epochs E-1 and E beats its best of the epochs before (epoch
    0 included) by more than 1 percentage point. A run on its plateau whose accuracy dipped at
    E-2 is not flagged (a plain difference ``top1[E] - top1[E-2]`` would be), a run still
    setting new highs is. Returns ``(flag, gain)``; ``(None, None)`` (unknown) when the run has
    no trained epoch before the last two (E < 3) or a value is missing.
    """
    last = record["epoch"]
    if last <= RISE_SPAN:
        return None, None
    # reversed: where an epoch is recorded twice, the first record wins, as in Run.at_epoch
    top1 = {
        r["epoch"]: number(r.get("eval_top1")) for r in reversed(run.records) if r["epoch"] < last
    }
    top1[last] = number(record.get("eval_top1"))
    recent = [top1.get(e) for e in range(last - RISE_SPAN + 1, last + 1)]
    before = [v for e, v in top1.items() if e <= last - RISE_SPAN and v is not None]
    if None in recent or not before:
        return None, None
    gain = max(recent) - max(before)
    return gain > RISE_LIMIT, gain


def unsteady(run: Run, record: dict) -> tuple[bool | None, float | None]:
    """Was ``run`` unsteady at the epoch E of ``record`` (its final record)? Its eval top-1 over
    epochs E-2..E swings, max minus min, by more than SWING_LIMIT = 1.5 points: a final value
    that a lucky or unlucky epoch decided. Returns ``(flag, swing)``; ``(None, None)`` when the
    run has fewer than 3 trained epochs or a value is missing."""
    last = record["epoch"]
    if last < SWING_SPAN:
        return None, None
    top1 = {r["epoch"]: number(r.get("eval_top1")) for r in reversed(run.records)}
    top1[last] = number(record.get("eval_top1"))
    recent = [top1.get(e) for e in range(last - SWING_SPAN + 1, last + 1)]
    if None in recent:
        return None, None
    swing = max(recent) - min(recent)
    return swing > SWING_LIMIT, swing


def unbounded(run: Run, record: dict) -> tuple[bool | None, float | None]:
    """Did the residual stream of ``run`` (a Transformer's ``stream_norm``, one value per
    block) grow without bound by the epoch E of ``record`` (its final record)? Flagged when a
    block's stream norm at E is more than GROWTH_LIMIT = 10 times what it was at epoch E // 2,
    the start of the run's last half. Returns ``(flag, largest ratio over blocks)``;
    ``(None, None)`` when there is no trained epoch or no ``stream_norm`` at both epochs."""
    last = record["epoch"]
    if last < 1:
        return None, None
    middle = next((r for r in run.records if r["epoch"] == last // 2), None)
    now, then = record.get("stream_norm"), (middle or {}).get("stream_norm")
    if not now or not then or len(now) != len(then):
        return None, None
    ratios = [
        number(a) / number(b) for a, b in zip(now, then) if number(b) and number(a) is not None
    ]
    if not ratios:
        return None, None
    growth = max(ratios)
    return growth > GROWTH_LIMIT, growth


@dataclass
class Flags:
    """Convergence of one table row: seeds in its means, how many are unknown, the flagged runs
    (not converged), and the unsteady ones with how many could not be judged."""

    seeds: int
    unknown: int
    flagged: list[str]
    unsteady: list[str] = field(default_factory=list)
    unsteady_unknown: int = 0
    unbounded: list[str] = field(default_factory=list)
    unbounded_unknown: int = 0

    def unbounded_cell(self) -> str:
        """``unbounded/seeds`` (runs whose residual stream grew > 10x over their last half),
        plus ``(k unknown)``; '' for a row without seeds."""
        return _count_cell(len(self.unbounded), self.seeds, self.unbounded_unknown)

    def unsteady_cell(self) -> str:
        """``unsteady/seeds``, e.g. ``1/3``, plus ``(k unknown)``; '' for a row without seeds."""
        return _count_cell(len(self.unsteady), self.seeds, self.unsteady_unknown)

    def cell(self) -> str:
        """``flagged/seeds``, e.g. ``2/3``, plus ``(k unknown)``; '' for a row without seeds."""
        return _count_cell(len(self.flagged), self.seeds, self.unknown)


def _count_cell(flagged: int, seeds: int, unknown: int) -> str:
    if not seeds:
        return ""
    return f"{flagged}/{seeds}" + (f" ({unknown} unknown)" if unknown else "")


def convergence_flags(used: Sequence[tuple[Run, dict]], seeds: int | None = None) -> Flags:
    """Flags of the ``(run, final record)`` pairs of a row. ``seeds`` (default: len(used)) may
    count records without a run, such as recovered 2019 logs: those are unknown."""
    flagged, unknown, swinging, swing_unknown = [], 0, [], 0
    growing, growth_unknown = [], 0
    for run, record in used:
        grew, growth = unbounded(run, record)
        growth_unknown += grew is None
        if grew:
            growing.append(
                f"{run.path.parent.name} {run.path.name}: residual stream x{growth:.1f} over "
                f"epochs {record['epoch'] // 2}..{record['epoch']}"
            )
        flag, rise = unconverged(run, record)
        unknown += flag is None
        if flag:
            flagged.append(
                f"{run.path.parent.name} {run.path.name}: best of the last {RISE_SPAN} "
                f"epochs {rise:+.2f} points above the best before"
            )
        swung, swing = unsteady(run, record)
        swing_unknown += swung is None
        if swung:
            swinging.append(
                f"{run.path.parent.name} {run.path.name}: top-1 moved {swing:.2f} points over "
                f"its last {SWING_SPAN} epochs"
            )
    seeds = len(used) if seeds is None else seeds
    missing = seeds - len(used)
    return Flags(
        seeds,
        unknown + missing,
        flagged,
        swinging,
        swing_unknown + missing,
        growing,
        growth_unknown + missing,
    )


def _flag_lines(criterion: str, flagged: list[str], heading: str, none: str) -> list[str]:
    """A criterion stated under a table, then the runs it flags under ``heading`` (or ``none``)."""
    if flagged:
        return [criterion, "", heading, "", *(f"- {f}" for f in flagged), ""]
    return [criterion, "", none, ""]


def unbounded_lines(flags: Iterable[Flags]) -> list[str]:
    """The residual-stream criterion, stated under a table of Transformers, and the runs it
    flags."""
    return _flag_lines(
        f"`unbounded`: done seeds whose residual stream (`stream_norm`, the mean norm per token "
        f"after each block, on the evaluated split) grew by more than {GROWTH_LIMIT:g}x at some "
        "block over the run's last half (epoch E against epoch E // 2).",
        [f for row in flags for f in row.unbounded],
        "Unbounded at epoch E:",
        "No run is flagged as unbounded.",
    )


def convergence_lines(flags: Iterable[Flags], split: str = "test") -> list[str]:
    """The criteria, stated under a table, and the list of every flagged run."""
    flags = list(flags)
    converged = _flag_lines(
        f"`unconverged`: done seeds that had not converged at the epoch E of the table's "
        f"values, out of the seeds in the means. A run is flagged when its {split} top-1 was "
        f"still setting new highs (early stopping's rule, patience {RISE_SPAN} epochs): "
        f"max(top1[E−1], top1[E]) − max(top1[0..E−2]) > {RISE_LIMIT:.1f} percentage point; "
        f"`unknown` when it has fewer than {RISE_SPAN + 2} epoch records (epoch 0 included) "
        "or they are not at hand (recovered logs).",
        [f for row in flags for f in row.flagged],
        "Not converged at epoch E:",
        "No run is flagged as not converged.",
    )
    steady = _flag_lines(
        f"`unsteady`: done seeds whose {split} top-1 moved by more than {SWING_LIMIT:.1f} "
        f"percentage points (max − min) over epochs E−{SWING_SPAN - 1}..E: a final value that "
        f"one lucky or unlucky epoch decided; `unknown` when it has fewer than {SWING_SPAN + 1} "
        "epoch records or they are not at hand.",
        [f for row in flags for f in row.unsteady],
        "Unsteady at epoch E:",
        "No run is flagged as unsteady.",
    )
    return converged + steady
