"""Evidence in the reports: effects with Welch intervals, and undefined cosines.

Shared by :mod:`mltools.reports.best_practices` and :mod:`mltools.reports.bottleneck`:

* **Effects** (DESIGN.md 8): an experiment's difference from its reference (``fc-*`` vs
  ``fc-tanh``, ``conv-*`` vs ``conv-tanh``, or vs ``fc-bp`` and ``conv-bp`` in a per-method
  study, DESIGN.md 10; a bottleneck size vs the full width at the same mode and init) in a
  final metric: mean over the experiment's done seeds minus mean over the
  reference's, with a 95% Welch confidence interval. An interval that excludes 0 is a *clear
  effect*; otherwise the effect is *within noise*. Fewer than 2 done seeds on a side: no interval.
* **Convergence** and the other flags are :mod:`mltools.reports.flags`'.
* **Undefined cosines**: a point whose mean final ``undefined_frac`` exceeds 5% is named, since a
  cosine counted as 0 there may reflect a saturated softmax rather than misalignment.

Final metrics are the records of :func:`mltools.reports.tables.final_records` (done seeds, each
run's last epoch). No torch and no pyplot; scipy is imported only when an interval is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mltools.models.architectures import FULL_WIDTH
from mltools.reports.tables import (
    alignment_of,
    fmt,
    markdown_table,
    new_figure,
    number,
    own_alignment,
    point_label,
    write_csv,
)

LEVEL = 0.95  # confidence level of the effect intervals
# reference method -> {experiment-name prefix -> the reference experiment}; the models of
# DESIGN.md 9 are compared with their BP in either case
REFERENCES = {
    "dfa": {
        "fc": "fc-tanh",
        "conv": "conv-tanh",
        "resnet": "resnet-bp",
        "transformer": "transformer-bp",
    },
    "bp": {
        "fc": "fc-bp",
        "conv": "conv-bp",
        "resnet": "resnet-bp",
        "transformer": "transformer-bp",
    },
}
UNDEFINED_LIMIT = 0.05  # report a point whose mean final undefined_frac exceeds this

UNDEFINED_EXPLANATION = (
    "An undefined cosine has a zero norm: for those alignment samples the output error was "
    "exactly zero (a saturated softmax), so their cosine is counted as 0, and a low `cos_mean` "
    "at such a point may reflect saturation rather than misalignment."
)


# -- references -----------------------------------------------------------------------------------
def reference_of(experiment: str, method: str = "dfa") -> str | None:
    """The experiment that ``experiment``'s effects are measured against, from its name's prefix
    (``fc-*`` -> ``fc-tanh``, ``conv-*`` -> ``conv-tanh``; with ``method="bp"``, ``fc-bp`` and
    ``conv-bp``), so new experiments need no list. None for a reference itself and for a name
    with another prefix."""
    reference = REFERENCES[method].get(experiment.split("-", 1)[0])
    return None if reference == experiment else reference


def reference_width(configs: Iterable[dict | None]) -> int:
    """The bottleneck size that a cell is compared with: the network's ``width`` from the first
    config that gives one as an int, else 800."""
    for config in configs:
        width = ((config or {}).get("model") or {}).get("width")
        if isinstance(width, int) and not isinstance(width, bool):
            return width
    return FULL_WIDTH


# -- final metrics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A final metric that effects are taken of. ``key`` names it in effects.csv, ``label`` in
    report.md and figures; ``value`` reads it from a run's final record (None when absent)."""

    key: str
    label: str
    value: Callable[[dict], float | None]
    decimals: int


def points_of(records: Iterable[dict]) -> set[int]:
    """The feedback point indices that occur in ``records``."""
    return {a["point"] for record in records for a in alignment_of(record)}


def point_cos(record: dict, point: int) -> float | None:
    """``cos_mean`` at ``point`` in ``record``, None when absent or not a finite number."""
    return next(
        (number(a.get("cos_mean")) for a in alignment_of(record) if a["point"] == point), None
    )


def mean_cos(record: dict) -> float | None:
    """The run's ``cos_mean`` averaged over its feedback points (finite values only)."""
    values = [v for v in (number(a.get("cos_mean")) for a in alignment_of(record)) if v is not None]
    return float(np.mean(values)) if values else None


def top1_metric(split: str = "test") -> Metric:
    return Metric("eval_top1", f"{split} top-1", lambda r: number(r.get("eval_top1")), 2)


def point_metric(point: int, label: Callable[[int], str] = point_label) -> Metric:
    return Metric(f"cos_{label(point)}", f"cos {label(point)}", lambda r: point_cos(r, point), 3)


MEAN_COS = Metric("cos_mean_points", "mean cos over points", mean_cos, 3)


# -- intervals and effects ------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A difference of means and its confidence interval; low, high and df are nan without one."""

    diff: float
    low: float
    high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` with its Welch confidence interval at ``level``.

    ``diff ± t_{(1+level)/2, df} * sqrt(s_a²/n_a + s_b²/n_b)``, sample variances (ddof=1) and the
    Welch–Satterthwaite ``df``. Fewer than 2 values on a side: no interval (diff is nan too when a
    side is empty). Both variances 0: the interval is ``[diff, diff]``, df nan.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return Interval(diff, diff, diff, math.nan)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t  # imported here: importing this module stays light

    half = float(t.ppf((1 + level) / 2, df)) * math.sqrt(va + vb)
    return Interval(diff, diff - half, diff + half, float(df))


@dataclass(frozen=True)
class Effect:
    """``metric`` of ``name`` minus that of ``reference``; ``n``, ``n_ref``: seeds that count."""

    name: str
    reference: str
    metric: Metric
    n: int
    n_ref: int
    interval: Interval

    @property
    def clear(self) -> bool | None:
        """True: the interval excludes 0 (clear effect); False: within noise; None: no interval."""
        if not math.isfinite(self.interval.low):
            return None
        return self.interval.low > 0 or self.interval.high < 0

    @property
    def verdict(self) -> str:
        return {
            True: "clear effect",
            False: "within noise",
            None: "no interval (fewer than 2 done seeds)",
        }[self.clear]


def compare(
    name: str,
    records: Sequence[dict],
    reference: str,
    ref_records: Sequence[dict],
    metrics: Sequence[Metric],
) -> list[Effect]:
    """One effect per metric, from the final records of the done seeds of both sides."""
    effects = []
    for metric in metrics:
        a = [v for v in map(metric.value, records) if v is not None]
        b = [v for v in map(metric.value, ref_records) if v is not None]
        effects.append(Effect(name, reference, metric, len(a), len(b), welch_interval(a, b)))
    return effects


def experiment_effects(
    finals: dict[str, list[dict]],
    split: str = "test",
    reference_method: str = "dfa",
    methods: dict[str, str] | None = None,
) -> tuple[list[Effect], list[str]]:
    """Effects of each experiment of ``finals`` (name -> final records of its done seeds, in table
    order) against its reference, and notes on what could not be compared.

    Metrics: eval top-1, ``cos_mean`` per feedback point, and ``cos_mean`` averaged over each
    run's points. Per point only when both experiments have the same points: with 3 points
    against 4, the same index is a different layer. Cosines only when both sides measure their
    own signal (``methods``: name -> method; see :func:`mltools.reports.tables.own_alignment`): a BP
    run's cosine is the DFA signal's on a BP net, shallow's is undefined.
    """
    methods = methods or {}
    effects, notes, missing, top1_only = [], [], [], []
    for name, records in finals.items():
        reference = reference_of(name, reference_method)
        if reference is None:
            continue
        if reference not in finals:
            missing.append(f"{name} (vs {reference})")
            continue
        ref_records = finals[reference]
        if not (own_alignment(methods.get(name)) and own_alignment(methods.get(reference))):
            top1_only.append(name)
            effects += compare(name, records, reference, ref_records, [top1_metric(split)])
            continue
        points, ref_points = points_of(records), points_of(ref_records)
        per_point = []
        if points == ref_points:
            per_point = [point_metric(p) for p in sorted(points)]
        elif points and ref_points:
            notes.append(
                f"{name}: no per-point effects, since it has {len(points)} feedback points "
                f"and {reference} has {len(ref_points)}, so the same index is a different "
                "layer; the mean over points is compared."
            )
        effects += compare(
            name, records, reference, ref_records, [top1_metric(split), *per_point, MEAN_COS]
        )
    if top1_only:
        notes.append(
            f"{', '.join(top1_only)}: top-1 only. Alignment is compared only between methods "
            f"that each measure their own learning signal: a BP run's cosine is that of the "
            f"DFA signal on the BP-trained network, and shallow's is undefined (no signal)."
        )
    return effects, notes + no_reference_note(missing)


def no_reference_note(missing: Sequence[str]) -> list[str]:
    return (
        [f"No effects for {', '.join(missing)}: no done runs of the reference here."]
        if missing
        else []
    )


# -- effects: outputs -----------------------------------------------------------------------------
def fmt_signed(x: float, decimals: int) -> str:
    return f"{x:+.{decimals}f}" if math.isfinite(x) else ""


def difference_cells(e: Effect) -> list[str]:
    """The two markdown cells every report gives a difference: ``**+1.23**`` (bold when the
    interval excludes 0; ``-`` without a difference) and ``[+0.40, +2.06]`` (``-`` without an
    interval)."""
    d, iv = e.metric.decimals, e.interval
    diff = fmt_signed(iv.diff, d) or "-"
    ci = f"[{fmt_signed(iv.low, d)}, {fmt_signed(iv.high, d)}]" if e.clear is not None else "-"
    return [f"**{diff}**" if e.clear else diff, ci]


def difference_text(e: Effect) -> str:
    """A difference in a sentence: ``+1.23, 95% CI [+0.40, +2.06], clear effect``."""
    d, iv = e.metric.decimals, e.interval
    ci = f", {LEVEL:.0%} CI [{fmt_signed(iv.low, d)}, {fmt_signed(iv.high, d)}]"
    return f"{fmt_signed(iv.diff, d)}{ci if e.clear is not None else ''}, {e.verdict}"


def effect_cells(e: Effect) -> list[str]:
    """Markdown cells: difference (bold when clear), CI, seeds, df, verdict."""
    return [
        *difference_cells(e),
        f"{e.n} vs {e.n_ref}",
        fmt(e.interval.df, 1) or "-",
        f"**{e.verdict}**" if e.clear else e.verdict,
    ]


def effects_section(
    effects: Sequence[Effect], notes: Sequence[str], name_header: str, rule: str, figure: str | None
) -> list[str]:
    """The ``## Effects`` section of a markdown report; ``rule`` says what is compared with what,
    ``figure`` is the relative link to effects.png (None when none was drawn)."""
    pct = f"{LEVEL:.0%}"
    lines = [
        "## Effects",
        "",
        "Effect = mean over the done seeds of the value at the table's epoch minus that of the "
        f"reference ({rule}). "
        f"{pct} Welch confidence interval: difference ± t(0.975, df) · sqrt(s1²/n1 + s2²/n2), "
        "sample variances (ddof = 1), Welch–Satterthwaite df; `seeds` gives n1 vs n2. An "
        "interval that excludes 0 is a **clear effect** (bold); otherwise the effect is within "
        "noise. With fewer than 2 done seeds on a side there is no interval. Top-1 differences "
        "are in percentage points; cos differences in cosine units.",
        "",
    ]
    if effects:
        head = [
            name_header,
            "reference",
            "metric",
            "difference",
            f"{pct} CI",
            "seeds",
            "df",
            "verdict",
        ]
        lines += [
            markdown_table(
                head, [[e.name, e.reference, e.metric.label, *effect_cells(e)] for e in effects]
            ),
            "",
        ]
    else:
        lines += ["No effect to show: no row has its reference among these runs.", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if figure:
        lines += [f"Figure: [effects]({figure}) (filled: clear effect; hollow: within noise).", ""]
    return lines


def write_effects_csv(path: Path, effects: Sequence[Effect], name_header: str) -> None:
    """One row per effect; ``clear`` is True/False, empty without an interval."""
    head = [
        name_header,
        "reference",
        "metric",
        "difference",
        "ci_low",
        "ci_high",
        "df",
        "seeds",
        "seeds_reference",
        "clear",
        "verdict",
    ]
    rows = [
        [
            e.name,
            e.reference,
            e.metric.key,
            fmt(e.interval.diff, 6),
            fmt(e.interval.low, 6),
            fmt(e.interval.high, 6),
            fmt(e.interval.df, 3),
            e.n,
            e.n_ref,
            "" if e.clear is None else e.clear,
            e.verdict,
        ]
        for e in effects
    ]
    write_csv(path, head, rows)


def write_effects(
    effects: Sequence[Effect],
    notes: Sequence[str],
    csv_path: Path,
    png_path: Path,
    *,
    name_header: str,
    rule: str,
    panels: Sequence[str],
    title: str,
) -> list[str]:
    """Write ``effects.csv`` and the figure (when there is a difference to draw) and return the
    markdown section, for a report that sits beside ``csv_path``."""
    write_effects_csv(csv_path, effects, name_header)
    drawn = plot_effects(png_path, effects, panels, title)
    link = png_path.relative_to(csv_path.parent).as_posix() if drawn else None
    return effects_section(effects, notes, name_header, rule, link)


def _marker(clear: bool | None) -> dict:
    """Line2D style of an effect: filled dot, clear; hollow, within noise; grey cross, no CI."""
    if clear is None:
        return {"marker": "x", "ls": "none", "color": "0.45", "ms": 6}
    color = "C3" if clear else "C0"
    return {
        "marker": "o",
        "ls": "none",
        "color": color,
        "mfc": color if clear else "white",
        "ms": 6,
    }


def plot_effects(path: Path, effects: Sequence[Effect], keys: Sequence[str], title: str) -> bool:
    """One panel per metric key in ``keys``, one row per compared name: the difference as a dot
    with its CI bar and a vertical line at 0. Returns False (nothing written) when no panel has
    a difference."""
    panels = [
        [e for e in effects if e.metric.key == key and math.isfinite(e.interval.diff)]
        for key in keys
    ]
    panels = [p for p in panels if p]
    if not panels:
        return False
    rows = list(dict.fromkeys((e.name, e.reference) for e in effects))
    fig = new_figure(4.4 * len(panels) + 1.6, 1.6 + 0.3 * len(rows))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for e in panel:
            iv = e.interval
            xerr = [[iv.diff - iv.low], [iv.high - iv.diff]] if e.clear is not None else None
            ax.errorbar(
                iv.diff,
                rows.index((e.name, e.reference)),
                xerr=xerr,
                capsize=3,
                lw=1.4,
                **_marker(e.clear),
            )
        ax.axvline(0.0, color="0.3", lw=1.0, zorder=0)
        unit = "percentage points" if panel[0].metric.key == "eval_top1" else "cosine"
        ax.set_title(panel[0].metric.label)
        ax.set_xlabel(f"difference from reference ({unit})")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [f"{name} − {ref}" for name, ref in rows])
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **_marker(clear)) for clear in (True, False, None)]
    fig.legend(
        handles,
        ["clear effect (CI excludes 0)", "within noise", "no interval (< 2 seeds)"],
        loc="outside lower center",
        ncol=3,
        frameon=False,
    )
    fig.suptitle(f"{title}: difference of seed means, bar = {LEVEL:.0%} Welch CI")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


# -- undefined cosines ----------------------------------------------------------------------------
def undefined_note(
    name: str,
    stats: dict[int, dict],
    points: Iterable[int],
    label: Callable[[int], str] = point_label,
) -> str | None:
    """``fc-relu: h2 61.0% undefined`` for the ``points`` whose mean final ``undefined_frac``
    (``stats[p]["undefined"]``, from point_stats) exceeds 5%; None when there are none."""
    parts = [
        f"{label(p)} {100 * u:.1f}% undefined"
        for p in points
        if (u := stats.get(p, {}).get("undefined", math.nan)) > UNDEFINED_LIMIT
    ]
    return f"{name}: {', '.join(parts)}" if parts else None


def undefined_lines(notes: Iterable[str | None]) -> list[str]:
    """The notes on undefined cosines with their explanation; nothing when there are none."""
    notes = [n for n in notes if n]
    if not notes:
        return []
    return (
        [
            f"Undefined cosines (mean final `undefined_frac` above {UNDEFINED_LIMIT:.0%} at a "
            "point, done seeds):",
            "",
        ]
        + [f"- {n}" for n in notes]
        + ["", UNDEFINED_EXPLANATION, ""]
    )
