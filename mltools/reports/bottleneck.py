"""Bottleneck report (DESIGN.md 5): alignment and accuracy against the bottleneck size.

From run folders ``<results>/bottleneck/<cell name>/seed<k>/`` (:func:`cell_name`; or from a
2019 log recovered by log_retrieval.py) it writes into a figures folder:

* ``alignment_vs_size.png``: ``cos_mean`` at the point right after the bottleneck layer, one
  curve per (method, points, init, mode);
* ``accuracy_vs_size.png``: train and eval top-1;
* ``bottleneck_table.md`` / ``bottleneck_table.csv``: one row per (method, points, mode, init,
  size), with convergence flags and undefined-cosine notes (:mod:`mltools.reports.effects`);
* ``effects.csv`` / ``effects.png``: each size against the full width (800 unless the config
  says ``width``) at the same method, points, mode and init, with 95% Welch intervals
  (DESIGN.md 8).

Networks with other feedback points (``--points 2019``) have fewer points; each run's
``point_blocks`` (config.json) renumbers its points by the hidden layer they read, so a column
``cos hX`` is one place in every network, empty where a network has no point.

Means and stds follow :mod:`mltools.reports.best_practices`: done seeds only, sample std
(ddof=1), ``-`` for one seed. Markdown shows top-1 with 2 decimals, cos with 3, degrees with 1; the
CSV carries 4, 6 and 4. No torch, no pyplot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mltools.errors import UsageError
from mltools.models.architectures import BOTTLENECK_POINTS, FULL_WIDTH
from mltools.reports.effects import (
    MEAN_COS,
    Effect,
    Metric,
    compare,
    no_reference_note,
    point_cos,
    reference_width,
    top1_metric,
    undefined_lines,
    undefined_note,
    write_effects,
)
from mltools.reports.flags import (
    Flags,
    convergence_flags,
    convergence_lines,
)
from mltools.reports.tables import (
    BP_MARK,
    METHOD_NAMES,
    OTHER_ALIGNMENT,
    Echo,
    alignment_of,
    config_point_blocks,
    cos_cell,
    final_records,
    fmt,
    fmt_counts,
    fmt_pm,
    legend_height,
    load_seeds,
    markdown_table,
    mean_std,
    new_figure,
    on_blocks,
    point_label,
    point_stats,
    status_counts,
    write_csv,
)
from mltools.runs.runlog import Run
from mltools.studies.experiments import BOTTLENECK, METHODS

_FOLDER = re.compile(
    r"(?:(?P<method>[^-]+)-)?(?P<mode>[^-]+)-(?P<init>[^-]+)-b(?P<size>\d+)(?:-points(?P<points>.+))?"
)
INIT_NAMES = {"std": "standard init", "pai": "PAI", "recovered": "2019 log"}
POINTS_NAMES = {
    "all": "",
    "2019": "2019 network",
    "2019-nomask": "2019 points, no input mask",
}


def cell_name(method: str, mode: str, init: str, size: int, points: str = "all") -> str:
    """A sweep cell's folder name: ``<mode>-<init>-b<size>``, prefixed by ``<method>-`` unless it
    is dfa and suffixed by ``-points<points>`` unless they are all (so the folders written before
    methods and points existed keep their names)."""
    name = f"{mode}-{init}-b{size}"
    name = name if method == "dfa" else f"{method}-{name}"
    return name if points == "all" else f"{name}-points{points}"


@dataclass
class Cell:
    """One (method, points, mode, init, size) of the sweep: its runs' counts and the records that
    enter means, their alignment points numbered by hidden block (:func:`on_blocks`)."""

    method: str
    mode: str
    init: str
    size: int
    counts: dict[str, int]
    records: list[dict]
    bottleneck_point: int
    eval_split: str = "test"
    runs: list[Run] = field(default_factory=list)
    used: list[tuple[Run, dict]] = field(default_factory=list)  # (run, record) behind ``records``
    points: str = "all"  # architectures.BOTTLENECK_POINTS

    @property
    def name(self) -> str:
        return cell_name(self.method, self.mode, self.init, self.size, self.points)

    @property
    def sort_key(self) -> tuple:
        return (
            _rank(self.method, METHODS),
            _rank(self.points, BOTTLENECK_POINTS),
            self.mode,
            self.init,
            self.size,
        )


def _rank(name: str, order: Sequence[str]) -> tuple:
    """Known names in ``order``'s order, then the others alphabetically."""
    return (order.index(name) if name in order else len(order), name)


def point_blocks(runs: Sequence[Run]) -> list[int] | None:
    """The first well-formed ``point_blocks`` of the runs' configs (:func:`config_point_blocks`)."""
    for run in runs:
        blocks = config_point_blocks(run.config)
        if blocks is not None:
            return blocks
    return None


def _bottleneck_point(runs: Sequence[Run], records: Sequence[dict]) -> int:
    """config's ``bottleneck_point`` (on ``point_blocks`` when given); else the point named
    after a Bottleneck layer; else h2."""
    blocks = point_blocks(runs)
    for run in runs:
        point = (run.config or {}).get("bottleneck_point")
        if isinstance(point, int):
            return blocks[point] if blocks and 0 <= point < len(blocks) else point
    for record in records:
        for a in alignment_of(record):
            if "Bottleneck" in str(a.get("name", "")):
                return a["point"]
    return 1  # DESIGN.md 4: Linear(in, 800) feeds h1, the bottleneck feeds h2


def collect_bottleneck(results: Path, epoch: int | None = None) -> tuple[list[Cell], list[str]]:
    """Cells found under ``<results>/bottleneck/``, with load warnings."""
    cells, warnings = [], []
    for folder in sorted((Path(results) / BOTTLENECK).glob("*")):
        if not folder.is_dir() or not any(folder.glob("seed*")):
            continue
        runs = load_seeds(folder)
        for run in runs:
            warnings += run.warnings
        config = next((r.config for r in runs if r.config), {})
        m = _FOLDER.fullmatch(folder.name)
        # The config is the authority; the folder name stands in when it is unreadable. Runs
        # written before methods (points) existed were DFA (all), their configs may lack the key.
        method = str(config.get("method") or (m and m["method"]) or "dfa")
        model = config.get("model") or {}
        points = str(model.get("points") or (m and m["points"]) or "all")
        mode = str(model.get("mode") or (m and m["mode"]) or "")
        init = str(config.get("init") or (m and m["init"]) or "")
        size = model.get("size") or (m and int(m["size"]))
        if not (mode and init and isinstance(size, int)):
            warnings.append(
                f"{folder}: neither config nor folder name gives mode, init and size; skipped"
            )
            continue
        used, missing = final_records(runs, epoch)
        warnings += missing
        blocks = point_blocks(runs)
        used = [(run, on_blocks(r, blocks)) for run, r in used]
        records = [r for _, r in used]
        cells.append(
            Cell(
                method,
                mode,
                init,
                size,
                status_counts(runs),
                records,
                _bottleneck_point(runs, records),
                config.get("eval_split", "test"),
                runs,
                used,
                points,
            )
        )
    cells.sort(key=lambda c: c.sort_key)
    return cells, warnings


def write_bottleneck_report(results: Path, epoch: int | None = None, echo: Echo = print) -> Path:
    """Figures and table of ``<results>/bottleneck/*/seed*/`` at the last epoch (or ``epoch``),
    written to ``<results>/bottleneck/figures/``, which is returned. UsageError when there is
    nothing to report."""
    results = Path(results)
    if not (results / BOTTLENECK).is_dir():
        raise UsageError(
            f"no bottleneck runs in {results} "
            f"(expected {results / BOTTLENECK}/<mode>-<init>-b<size>/seed<k>/)"
        )
    cells, warnings = collect_bottleneck(results, epoch)
    if not cells:
        raise UsageError(f"no bottleneck runs in {results / BOTTLENECK}")
    if not any(c.records for c in cells):
        at = f"epoch {epoch}" if epoch is not None else "their last epoch"
        raise UsageError(f"no done bottleneck run has a record at {at} in {results / BOTTLENECK}")
    at = f"epoch {epoch}" if epoch is not None else "the last epoch of each run"
    return write_outputs(cells, results / BOTTLENECK / "figures", warnings, at, point_label, echo)


# -- outputs --------------------------------------------------------------------------------------
@dataclass
class Columns:
    """What the table's columns depend on: the feedback points found, those with an angle,
    whether any bottleneck point has undefined cosines, and the evaluated split(s)."""

    points: list[int]
    with_deg: list[int]
    with_undefined: bool
    eval_name: str
    label: Callable[[int], str]

    def markdown_head(self) -> list[str]:
        return [
            *("method", "points", "mode", "init", "size", "seeds", "unconverged", "unsteady"),
            *("train top-1", f"{self.eval_name} top-1", "bottleneck point"),
            *(f"cos {self.label(p)}" for p in self.points),
            *(f"deg {self.label(p)}" for p in self.with_deg),
        ]

    def csv_head(self) -> list[str]:
        return [
            *("method", "points", "mode", "init", "size", "seeds_done", "seeds_diverged"),
            *("seeds_used", "seeds_unconverged", "seeds_convergence_unknown", "seeds_unsteady"),
            *("eval_split", "train_top1_mean", "train_top1_std", "eval_top1_mean"),
            *("eval_top1_std", "bottleneck_point", "bottleneck_cos_mean", "bottleneck_cos_std"),
            *(f"cos_{self.label(p)}" for p in self.points),
            *(f"deg_{self.label(p)}" for p in self.with_deg),
            *(["bottleneck_undefined_frac"] if self.with_undefined else []),
        ]


def columns_of(
    cells: Sequence[Cell], stats: Sequence[dict], label: Callable[[int], str]
) -> Columns:
    points = sorted({p for s in stats for p in s})
    with_deg = [
        p for p in points if any(math.isfinite(s.get(p, {}).get("deg", math.nan)) for s in stats)
    ]
    with_undefined = any(math.isfinite(undefined_frac(c, s)) for c, s in zip(cells, stats))
    eval_name = "/".join(sorted({c.eval_split for c in cells}))
    return Columns(points, with_deg, with_undefined, eval_name, label)


def undefined_frac(cell: Cell, stats: dict) -> float:
    """The fraction of undefined cosines at the cell's bottleneck point (nan when unknown)."""
    return stats.get(cell.bottleneck_point, {}).get("undefined", math.nan)


def markdown_row(c: Cell, s: dict, flag: Flags, cols: Columns) -> list[str]:
    """The row of cell ``c`` (point stats ``s``) in bottleneck_table.md."""
    tr = mean_std(r.get("train_top1") for r in c.records)
    ev = mean_std(r.get("eval_top1") for r in c.records)
    return [
        *(c.method, c.points, c.mode, c.init, str(c.size), fmt_counts(c.counts)),
        *(flag.cell(), flag.unsteady_cell(), fmt_pm(tr[0], tr[1], 2), fmt_pm(ev[0], ev[1], 2)),
        cols.label(c.bottleneck_point),
        *(cos_cell(s.get(p, {}).get("cos"), 3, c.method) for p in cols.points),
        *(cos_cell(s.get(p, {}).get("deg"), 1, c.method) for p in cols.with_deg),
    ]


def csv_row(c: Cell, s: dict, flag: Flags, cols: Columns) -> list[object]:
    """The row of cell ``c`` (point stats ``s``) in bottleneck_table.csv."""
    tr = mean_std(r.get("train_top1") for r in c.records)
    ev = mean_std(r.get("eval_top1") for r in c.records)
    bn = s.get(c.bottleneck_point, {})
    defined = OTHER_ALIGNMENT.get(c.method) != "undefined"  # shallow: no cosine to write
    return [
        *(c.method, c.points, c.mode, c.init, c.size),
        *(c.counts.get("done", 0), c.counts.get("diverged", 0), len(c.records)),
        *(len(flag.flagged), flag.unknown, len(flag.unsteady), c.eval_split),
        *(fmt(tr[0], 4), fmt(tr[1], 4), fmt(ev[0], 4), fmt(ev[1], 4)),
        cols.label(c.bottleneck_point),
        fmt(bn.get("cos"), 6) if defined else "",
        fmt(bn.get("cos_std"), 6) if defined else "",
        *(fmt(s.get(p, {}).get("cos"), 6) if defined else "" for p in cols.points),
        *(fmt(s.get(p, {}).get("deg"), 4) if defined else "" for p in cols.with_deg),
        *([fmt(undefined_frac(c, s), 6)] if cols.with_undefined else []),
    ]


def intro_lines(at: str, source: str) -> list[str]:
    return [
        "# Bottleneck sweep",
        "",
        f"Values at {at}{'; ' + source if source else ''}. Top-1 in percent, `mean ± std` over "
        "done seeds (sample std, ddof = 1; `± -` for one seed); diverged seeds are counted in "
        "`seeds` but left out of the means. `cos X` is the mean `cos_mean` at feedback point X, "
        "`deg X` the mean `angle_deg`; `bottleneck point` is the point right after the "
        "bottleneck layer, plotted in alignment_vs_size.png. Shallow delivers no signal, so "
        f"its cosines are undefined (and not plotted); {BP_MARK} BP: the cosine of the DFA "
        "signal on the BP-trained network.",
        "",
    ]


def write_outputs(
    cells: Sequence[Cell],
    folder: Path,
    warnings: Sequence[str],
    at: str,
    label: Callable[[int], str],
    echo: Echo = print,
    source: str = "",
) -> Path:
    """Table (md, csv) and both figures for ``cells`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for w in warnings:
        echo(f"warning: {w}")
    stats = [point_stats(c.records) for c in cells]
    flags = [convergence_flags(c.used, len(c.records)) for c in cells]
    cols = columns_of(cells, stats, label)
    lines = list(zip(cells, stats, flags))
    table = markdown_table(cols.markdown_head(), [markdown_row(*line, cols) for line in lines])
    write_csv(
        folder / "bottleneck_table.csv", cols.csv_head(), [csv_row(*ln, cols) for ln in lines]
    )
    effects, notes = bottleneck_effects(cells, label, cols.eval_name)
    text = [
        *intro_lines(at, source),
        *points_lines(cells, stats, label),
        table,
        "",
        *convergence_lines(flags, cols.eval_name),
        *undefined_lines(
            undefined_note(c.name, s, [c.bottleneck_point], label)
            for c, s in zip(cells, stats)
            if OTHER_ALIGNMENT.get(c.method) != "undefined"  # shallow: undefined by definition
        ),
        *write_effects(
            effects,
            notes,
            folder / "effects.csv",
            folder / "effects.png",
            name_header="cell",
            rule=f"size b vs the full width, {FULL_WIDTH} unless the config "
            "gives `width`, at the same method, points, mode and init; and a cell of the 2019 "
            "points vs today's network (points `all`) at the same method, mode, init and size",
            panels=["eval_top1", "bottleneck_cos", MEAN_COS.key],
            title="Bottleneck sizes",
        ),
    ]
    if warnings:
        text += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    (folder / "bottleneck_table.md").write_text("\n".join(text))
    plot_alignment(folder / "alignment_vs_size.png", cells, stats, label, at)
    plot_accuracy(folder / "accuracy_vs_size.png", cells, cols.eval_name, at)
    echo(table)
    return folder


def points_lines(
    cells: Sequence[Cell], stats: Sequence[dict], label: Callable[[int], str]
) -> list[str]:
    """Which feedback points each network of the table has (`points` column), as a paragraph."""
    have: dict[str, set[int]] = {}
    for c, s in zip(cells, stats):
        have.setdefault(c.points, set()).update(s)
    known = {
        "all": "a point before every hidden weight layer",
        "2019": "the 2019 code's network: no point before the bottleneck layer, and its "
        "input-gradient mask in training (docs/deviations-bottleneck.md)",
        "2019-nomask": "the 2019 code's points without its input-gradient mask",
    }
    parts = [
        f"`{name}` ({known[name] + '; ' if name in known else ''}points "
        f"{', '.join(label(p) for p in sorted(points)) or 'none recorded'})"
        for name, points in sorted(have.items(), key=lambda kv: _rank(kv[0], BOTTLENECK_POINTS))
    ]
    return [f"`points`: the network's feedback points: {'; '.join(parts)}.", ""]


def bottleneck_effects(
    cells: Sequence[Cell], label: Callable[[int], str] = point_label, split: str = "test"
) -> tuple[list[Effect], list[str]]:
    """Effects (DESIGN.md 8) of each cell against the cell of the full width (config ``width``,
    else 800) at the same method, points, mode and init: eval top-1, ``cos_mean`` at the
    bottleneck point (when both cells name the same one) and ``cos_mean`` averaged over each
    run's points; top-1 only where the method's cosine is undefined (shallow). A cell of other
    points (2019) is also compared with today's network (points all) at the same method, mode,
    init and size, when the table has it: top-1 and the bottleneck point only, since a mean over
    other points is another quantity."""
    by_key = {(c.method, c.points, c.mode, c.init, c.size): c for c in cells}
    effects, notes, missing = [], [], []
    for c in cells:
        width = reference_width(run.config for run in c.runs)
        pairs = []  # (reference, also the mean over points)
        if c.size != width:
            ref = by_key.get((c.method, c.points, c.mode, c.init, width))
            if ref is None:
                missing.append(f"{c.name} (vs size {width})")
            else:
                pairs.append((ref, True))
        today = by_key.get((c.method, "all", c.mode, c.init, c.size))
        if c.points != "all" and today is not None:
            pairs.append((today, False))
        for ref, with_mean in pairs:
            if OTHER_ALIGNMENT.get(c.method) == "undefined":
                effects += compare(c.name, c.records, ref.name, ref.records, [top1_metric(split)])
                continue
            at_point = []
            if ref.bottleneck_point == c.bottleneck_point:
                at_point = [bottleneck_metric(c.bottleneck_point, label)]
            else:
                notes.append(
                    f"{c.name}: no bottleneck-point effect against {ref.name}, since its "
                    f"bottleneck point is {label(c.bottleneck_point)} and {ref.name}'s is "
                    f"{label(ref.bottleneck_point)}."
                )
            metrics = [top1_metric(split), *at_point, *([MEAN_COS] if with_mean else [])]
            effects += compare(c.name, c.records, ref.name, ref.records, metrics)
    return effects, notes + no_reference_note(missing)


def bottleneck_metric(point: int, label: Callable[[int], str] = point_label) -> Metric:
    """``cos_mean`` at the bottleneck point, keyed ``bottleneck_cos`` whatever the point."""
    return Metric(
        "bottleneck_cos", f"cos {label(point)} (bottleneck)", lambda r: point_cos(r, point), 3
    )


Curve = tuple[str, str, str, str]  # (method, points, init, mode)


def _series(cells: Sequence[Cell]) -> dict[Curve, list[int]]:
    """Indices of ``cells`` per curve (method, points, init, mode): methods in METHODS order,
    points in BOTTLENECK_POINTS order, standard init first, sizes ascending."""
    series: dict[Curve, list[int]] = {}
    for i, c in enumerate(cells):
        if c.records:
            series.setdefault((c.method, c.points, c.init, c.mode), []).append(i)
    key = lambda k: (  # noqa: E731
        _rank(k[0], METHODS),
        _rank(k[1], BOTTLENECK_POINTS),
        _rank(k[2], list(INIT_NAMES)),
        k[3],
    )
    return {k: sorted(series[k], key=lambda i: cells[i].size) for k in sorted(series, key=key)}


def _styles(series: dict[Curve, list[int]]) -> dict[Curve, dict]:
    """One colour per (method, points, init), line and marker by mode, so the two plots read
    alike; labels name the mode only when the plot has both."""
    colours = list(dict.fromkeys(curve[:3] for curve in series))
    both_modes = len({curve[3] for curve in series}) > 1
    styles = {}
    for method, points, init, mode in series:
        dashed = mode == "width"
        network = POINTS_NAMES.get(points, f"points {points}")
        styles[method, points, init, mode] = {
            "color": f"C{colours.index((method, points, init)) % 10}",
            "ls": "--" if dashed else "-",
            "marker": "s" if dashed else "o",
            "ms": 4,
            "capsize": 3,
            "lw": 1.5,
            "label": f"{METHOD_NAMES.get(method, method)}, {network + ', ' if network else ''}"
            f"{INIT_NAMES.get(init, init)}{f', {mode} bottleneck' if both_modes else ''}",
        }
    return styles


def _size_axis(ax, sizes: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(sizes))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("bottleneck size (trainable units)")
    ax.grid(alpha=0.3)


def plot_alignment(
    path: Path, cells: Sequence[Cell], stats: Sequence[dict], label, at: str
) -> None:
    series = _series(cells)
    fig = new_figure(7.0, 4.6 + legend_height(len(series), 2))
    ax = fig.subplots()
    low, high = 0.0, 1.0
    styles = _styles(series)
    for curve, idx in series.items():
        if OTHER_ALIGNMENT.get(curve[0]) == "undefined":
            continue  # shallow: no signal, no alignment to draw
        x = [cells[i].size for i in idx]
        y = np.array(
            [stats[i].get(cells[i].bottleneck_point, {}).get("cos", math.nan) for i in idx]
        )
        e = np.array(
            [stats[i].get(cells[i].bottleneck_point, {}).get("cos_std", math.nan) for i in idx]
        )
        e = np.nan_to_num(e)  # one seed: no error bar
        ax.errorbar(x, y, yerr=e, **styles[curve])
        if np.isfinite(y).any():
            # 0..1 as the paper plots it, widened only so that no point or error bar is cut off.
            lo, hi = float(np.nanmin(y - e)), float(np.nanmax(y + e))
            low = min(low, lo - 0.03 if lo < 0 else 0.0)
            high = max(high, hi + 0.02 if hi > 1 else 1.0)
    points = sorted({c.bottleneck_point for c in cells if c.records})
    _size_axis(ax, [c.size for c in cells if c.records])
    ax.set_ylim(max(low, -1.05), min(high, 1.05))
    ax.set_ylabel(f"alignment after the bottleneck (cos at {', '.join(map(label, points))})")
    ax.set_title(f"Alignment vs bottleneck size ({at})")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    fig.savefig(path, dpi=110)


def plot_accuracy(path: Path, cells: Sequence[Cell], eval_name: str, at: str) -> None:
    series = _series(cells)
    fig = new_figure(11.0, 4.4 + legend_height(len(series), 3))
    axes = fig.subplots(1, 2, sharey=True)
    styles = _styles(series)
    for curve, idx in series.items():
        if OTHER_ALIGNMENT.get(curve[0]) == "undefined":
            continue  # shallow: no signal, no alignment to draw
        x = [cells[i].size for i in idx]
        for ax, key in zip(axes, ("train_top1", "eval_top1")):
            ms = [mean_std(r.get(key) for r in cells[i].records) for i in idx]
            y = np.array([m for m, _, _ in ms])
            e = np.nan_to_num(np.array([s for _, s, _ in ms]))
            ax.errorbar(x, y, yerr=e, **styles[curve])
    sizes = [c.size for c in cells if c.records]
    for ax, title in zip(axes, ("train top-1", f"{eval_name} top-1")):
        _size_axis(ax, sizes)
        ax.set_title(title)
    axes[0].set_ylabel("top-1 accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Accuracy vs bottleneck size ({at})")
    fig.savefig(path, dpi=110)
