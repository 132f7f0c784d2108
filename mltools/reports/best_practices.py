"""Best-practices report (DESIGN.md 4): a table and figures from the run folders of a sweep.

Reads ``<out>/best_practices/<experiment>/seed<k>/`` and writes ``report.md``, ``summary.csv``,
``effects.csv``, ``figures/<group>.png`` and ``figures/effects.png`` into ``<out>/best_practices/``
(effects, convergence flags and undefined cosines: :mod:`mltools.reports.effects`). Conventions,
shared with :mod:`mltools.reports.bottleneck`:

* only ``done`` seeds enter means and stds; diverged, failed and running seeds are counted;
* values are taken at the run's last epoch (``config["epochs"]``, or its last record when the
  config does not say); a done seed without that record is left out with a warning;
* ``±`` is the sample standard deviation over seeds (ddof=1); with a single seed it is shown as
  ``-`` in markdown and left empty in the CSV;
* a damaged run never stops the report: load_run's warnings are echoed and listed in report.md.

No torch here, and no pyplot: figures are drawn on ``matplotlib.figure.Figure`` with the Agg
canvas, so the report runs headless and leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mltools.reports.effects import (
    MEAN_COS,
    REFERENCES,
    difference_cells,
    difference_text,
    experiment_effects,
    undefined_lines,
    undefined_note,
    write_effects,
)
from mltools.reports.flags import (
    Flags,
    convergence_flags,
    convergence_lines,
    unbounded_lines,
)
from mltools.reports.tables import (
    ARCH_NAMES,
    BP_MARK,
    METHOD_NAMES,
    OTHER_ALIGNMENT,
    Echo,
    alignment_of,
    alignment_value,
    alignment_ylim,
    cos_cell,
    epoch_curve,
    final_records,
    fmt,
    fmt_counts,
    fmt_pm,
    legend_columns,
    legend_height,
    load_seeds,
    markdown_table,
    mean_std,
    new_figure,
    number,
    point_label,
    point_stats,
    status_counts,
    write_csv,
)
from mltools.runs.recipes import recipe_of
from mltools.runs.runlog import Run
from mltools.studies.experiments import BEST_PRACTICES, EXPERIMENTS, GROUPS


def plot_group(path: Path, title: str, curves: dict[str, dict]) -> None:
    """One PNG: alignment vs epoch at each feedback point, then eval top-1 vs epoch, then (for
    Transformers, which record ``stream_norm``) the residual stream after the last block.

    ``curves``: experiment -> {"label", "runs", "eval_label", "arch", "alignment"}; mean over
    the done runs, band = sample std over seeds. A curve whose ``alignment`` is False (shallow:
    undefined) is left out of the alignment panels.
    """
    points = sorted(
        {
            a["point"]
            for c in curves.values()
            for r in c["runs"]
            for rec in r.records
            for a in alignment_of(rec)
        }
    )
    streams = any(
        rec.get("stream_norm") for c in curves.values() for r in c["runs"] for rec in r.records
    )
    panels = len(points) + 1 + streams
    width = 3.6 * panels
    columns = legend_columns([c["label"] for c in curves.values()], width)
    fig = new_figure(width, 4.2 + legend_height(len(curves), columns))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    top1_ax = axes[len(points)]
    colors = [f"C{i}" for i in range(10)]
    handles, labels = [], []
    eval_labels = sorted({c["eval_label"] for c in curves.values()})
    for i, c in enumerate(curves.values()):
        style = {"color": colors[i % 10], "ls": "--" if c["arch"] == "cnn" else "-", "lw": 1.6}
        lows = []
        for ax, point in zip(axes, points if c.get("alignment", True) else []):
            x, m, s = epoch_curve(c["runs"], alignment_value(point))
            if len(x) == 0:
                continue
            ax.plot(x, m, **style)
            ax.fill_between(x, m - s, m + s, color=style["color"], alpha=0.18, lw=0)
            lows.append(float(np.min(m - s)))
        x, m, s = epoch_curve(c["runs"], lambda r: r.get("eval_top1"))
        (line,) = top1_ax.plot(x, m, **style)
        top1_ax.fill_between(x, m - s, m + s, color=style["color"], alpha=0.18, lw=0)
        if streams:
            x, m, _ = epoch_curve(c["runs"], lambda r: (r.get("stream_norm") or [None])[-1])
            axes[-1].plot(x, m, **style)
        handles.append(line)
        labels.append(c["label"])
        c["lows"] = lows
    all_lows = [x for c in curves.values() for x in c["lows"]]
    from matplotlib.ticker import MaxNLocator

    for ax, point in zip(axes, points):
        ax.set_title(f"alignment at feedback point {point_label(point)}")
        alignment_ylim(ax, all_lows)
    if points:
        axes[0].set_ylabel("cos(learning signal, BP gradient)")
    top1_ax.set_title(" / ".join(eval_labels) + " accuracy")
    top1_ax.set_ylabel(" / ".join(eval_labels) + " (%)")
    if streams:
        axes[-1].set_title("residual stream after the last block")
        axes[-1].set_ylabel("mean norm per token")
        if axes[-1].lines:
            axes[-1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: mean over done seeds, band = ± 1 sample std")
    fig.legend(handles, labels, loc="outside lower center", ncol=columns, frameon=False)
    fig.savefig(path, dpi=110)


def arch_label(config: dict) -> str:
    """``Transformer``, or ``Transformer (post-norm, error at hidden)`` where a Transformer's
    block layout or error site is not the default."""
    arch, model = str(config.get("arch")), config.get("model") or {}
    changed = []
    if model.get("norm", "pre") != "pre":
        changed.append(f"{model['norm']}-norm")
    if model.get("error_at", "logits") != "logits":
        changed.append(f"error at {model['error_at']}")
    return ARCH_NAMES.get(arch, arch) + (f" ({', '.join(changed)})" if changed else "")


# -- the report -----------------------------------------------------------------------------------
@dataclass
class Row:
    """One experiment of the table."""

    name: str
    runs: list[Run]
    used: list[tuple[Run, dict]] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return next((r.config for r in self.runs if r.config), {})

    @property
    def eval_split(self) -> str:
        return self.config.get("eval_split", "test")

    def setting(self, key: str, default: object = "") -> object:
        """A setting from the run's config, else the experiment's definition, else default."""
        return self.config.get(key, EXPERIMENTS.get(self.name, ("", {}))[1].get(key, default))

    @property
    def method(self) -> str:
        return str(self.setting("method", "dfa"))

    @property
    def epochs(self) -> str:
        """The epochs of the final records, ``/``-joined (one in a sweep)."""
        return "/".join(map(str, sorted({r["epoch"] for r in self.records})))

    @property
    def lrs(self) -> str:
        """The learning rates of the done seeds, ``/``-joined (one in a sweep)."""
        lrs = sorted({r.config.get("lr") for r, _ in self.used if number(r.config.get("lr"))})
        return "/".join(f"{lr:g}" for lr in lrs)

    @property
    def recipes(self) -> str:
        """The recipes (mltools.runs.recipes) of the done seeds by name, ``/``-joined."""
        return "/".join(sorted({recipe_of(r.config)["name"] for r, _ in self.used}))

    @property
    def records(self) -> list[dict]:
        """The final records that enter the means."""
        return [record for _, record in self.used]


def collect_best_practices(out: Path) -> tuple[list[Row], list[str]]:
    """Experiments found under ``<out>/best_practices/``, in EXPERIMENTS order (unknown names after,
    sorted), with load warnings."""
    root = Path(out) / BEST_PRACTICES
    folders = {p.name: p for p in root.glob("*") if p.is_dir() and any(p.glob("seed*"))}
    names = [n for n in EXPERIMENTS if n in folders] + sorted(set(folders) - set(EXPERIMENTS))
    rows, warnings = [], []
    for name in names:
        row = Row(name, load_seeds(folders[name]))
        for run in row.runs:
            warnings += run.warnings
        row.used, missing = final_records(row.runs)
        warnings += missing
        rows.append(row)
    return rows, warnings


@dataclass
class Columns:
    """What the summary's columns depend on: the feedback points found, those with undefined
    cosines, the evaluation splits and whether any run recorded its residual stream."""

    points: list[int]
    undefined: list[int]
    splits: list[str]
    streams: bool

    @property
    def split(self) -> str:
        return self.splits[0] if len(self.splits) == 1 else "eval"

    def markdown_head(self) -> list[str]:
        eval_head = f"{self.splits[0]} top-1" if len(self.splits) == 1 else "eval top-1 (split)"
        return [
            *("experiment", "method", "architecture", "setting", "epochs", "lr", "recipe"),
            *("seeds", "unconverged", "unsteady", *(["unbounded"] if self.streams else [])),
            *(eval_head, "train top-1", "mean cos"),
            *(f"cos {point_label(p)}" for p in self.points),
            *(f"deg {point_label(p)}" for p in self.points),
        ]

    def csv_head(self) -> list[str]:
        return [
            *("experiment", "method", "architecture", "setting", "epochs", "lr", "recipe"),
            *("seeds_done", "seeds_diverged", "seeds_failed", "seeds_running", "seeds_other"),
            *("seeds_used", "seeds_unconverged", "seeds_convergence_unknown", "seeds_unsteady"),
            *("eval_split", "eval_top1_mean", "eval_top1_std", "train_top1_mean"),
            *("train_top1_std", "alignment", "cos_mean_points"),
            *(f"cos_{point_label(p)}" for p in self.points),
            *(f"deg_{point_label(p)}" for p in self.points),
            *(f"undefined_{point_label(p)}" for p in self.undefined),
        ]


def columns_of(rows: Sequence[Row], all_stats: Sequence[dict], flags: Sequence[Flags]) -> Columns:
    points = sorted({p for stats in all_stats for p in stats})
    undefined = [
        p
        for p in points
        if any(math.isfinite(s.get(p, {}).get("undefined", math.nan)) for s in all_stats)
    ]
    # Transformers record their residual stream: the unbounded column is theirs.
    streams = any(f.unbounded_unknown < f.seeds for f in flags)
    return Columns(points, undefined, sorted({row.eval_split for row in rows}), streams)


def numbers(row: Row) -> tuple[dict[str, int], tuple, tuple, float]:
    """A row's status counts, eval and train top-1 (mean, std, n) and mean cosine."""
    ev = mean_std(r.get("eval_top1") for r in row.records)
    tr = mean_std(r.get("train_top1") for r in row.records)
    return status_counts(row.runs), ev, tr, mean_std(map(MEAN_COS.value, row.records))[0]


def markdown_row(row: Row, stats: dict, flag: Flags, cols: Columns) -> list[str]:
    """The row of ``row`` in report.md's table."""
    method = row.method
    counts, ev, tr, cos = numbers(row)
    ev_cell = fmt_pm(ev[0], ev[1], 2)
    if len(cols.splits) != 1 and ev_cell:
        ev_cell += f" ({row.eval_split})"
    return [
        row.name,
        METHOD_NAMES.get(method, method),
        arch_label(row.config),
        EXPERIMENTS.get(row.name, ("(not a paper experiment)", {}))[0],
        row.epochs,
        row.lrs,
        row.recipes,
        fmt_counts(counts) + (" *" if counts.get("diverged") else ""),
        flag.cell(),
        flag.unsteady_cell(),
        *([flag.unbounded_cell()] if cols.streams else []),
        ev_cell,
        fmt_pm(tr[0], tr[1], 2),
        cos_cell(cos, 3, method),
        *(cos_cell(stats.get(p, {}).get("cos"), 3, method) for p in cols.points),
        *(cos_cell(stats.get(p, {}).get("deg"), 1, method) for p in cols.points),
    ]


def csv_row(row: Row, stats: dict, flag: Flags, cols: Columns) -> list[object]:
    """The row of ``row`` in summary.csv."""
    method, records = row.method, row.records
    counts, ev, tr, cos = numbers(row)
    other = sum(n for s, n in counts.items() if s not in ("done", "diverged", "failed", "running"))
    defined = OTHER_ALIGNMENT.get(method) != "undefined"  # shallow: no cosine to write
    return [
        row.name,
        method,
        row.setting("arch"),
        EXPERIMENTS.get(row.name, ("(not a paper experiment)", {}))[0],
        row.epochs,
        row.lrs,
        row.recipes,
        counts.get("done", 0),
        counts.get("diverged", 0),
        counts.get("failed", 0),
        counts.get("running", 0),
        other,
        len(records),
        len(flag.flagged),
        flag.unknown,
        len(flag.unsteady),
        row.eval_split,
        fmt(ev[0], 4),
        fmt(ev[1], 4),
        fmt(tr[0], 4),
        fmt(tr[1], 4),
        OTHER_ALIGNMENT.get(method, "own signal"),
        fmt(cos, 6) if defined else "",
        *(fmt(stats.get(p, {}).get("cos"), 6) if defined else "" for p in cols.points),
        *(fmt(stats.get(p, {}).get("deg"), 4) if defined else "" for p in cols.points),
        *(fmt(stats.get(p, {}).get("undefined"), 6) for p in cols.undefined),
    ]


def diverged_runs(rows: Sequence[Row]) -> list[str]:
    """``<experiment>/seed<k> (epoch <e>)`` for every diverged run."""
    return [
        f"{row.name}/{run.path.name} (epoch {run.config.get('diverged_epoch')})"
        for row in rows
        for run in row.runs
        if run.status == "diverged"
    ]


def intro_lines(root: Path) -> list[str]:
    return [
        "# Best-practices report",
        "",
        f"Runs read from `{root}/<experiment>/seed<k>/`. Values are at each run's last epoch "
        "(the `epochs` column). Accuracies are top-1 in percent, `mean ± std` over the *done* "
        "seeds, where std is the sample standard deviation (ddof = 1); `± -` means a single "
        "done seed. `cos hK` is the mean over done seeds of `cos_mean` (cosine between the DFA "
        "signal and the BP gradient) at feedback point hK, counted from the input; `deg hK` is "
        "the mean of `angle_deg`; `mean cos` averages `cos_mean` over a run's points. For FA, "
        "sign and DRTP the signal is the one that method delivers; shallow delivers none, so "
        f"its cosines are undefined. {BP_MARK} BP rows: BP trains with the exact gradient, so "
        "their cosine is that of the DFA signal on the BP-trained network (the paper's BP "
        "baselines), a different quantity from the other rows'; it is not compared with them "
        "in Effects. `lr`: the learning rate of the done seeds.",
        "",
    ]


def write_best_practices_report(out: Path, echo: Echo = print, reference: str = "dfa") -> Path:
    """Write ``report.md``, ``summary.csv``, ``effects.csv`` and ``figures/*.png`` under
    ``<out>/best_practices/``; echo warnings and the table. Returns the path of report.md.

    ``reference``: the method whose fc-/conv- experiments the effects are measured against;
    with ``"bp"`` (a per-method study, DESIGN.md 10) the report also has an ``Against BP``
    table and a figure of eval top-1 vs epoch per method.
    """
    root = Path(out) / BEST_PRACTICES
    if not root.is_dir():
        raise FileNotFoundError(f"no best_practices folder in {out}")
    rows, warnings = collect_best_practices(out)
    for w in warnings:
        echo(f"warning: {w}")
    all_stats = [point_stats(row.records) for row in rows]
    flags = [convergence_flags(row.used) for row in rows]
    cols = columns_of(rows, all_stats, flags)
    lines = list(zip(rows, all_stats, flags))
    table = markdown_table(cols.markdown_head(), [markdown_row(*line, cols) for line in lines])
    write_csv(root / "summary.csv", cols.csv_head(), [csv_row(*line, cols) for line in lines])
    figures = write_group_figures(root, rows)
    if reference == "bp" and any(row.used for row in rows):
        figures.append(plot_top1_per_method(root / "figures" / "top1-per-method.png", rows))
    effects, notes = experiment_effects(
        {row.name: row.records for row in rows},
        cols.split,
        reference,
        {row.name: row.method for row in rows},
    )
    references = REFERENCES[reference]
    diverged = diverged_runs(rows)
    text = [*intro_lines(root), table, ""]
    if diverged:
        text += [
            "\\* Diverged seeds are counted in `seeds` but left out of every mean and std: "
            + ", ".join(diverged)
            + ".",
            "",
        ]
    text += convergence_lines(flags, cols.split)
    if cols.streams:
        text += unbounded_lines(flags)
    text += undefined_lines(
        undefined_note(row.name, stats, cols.points)
        for row, stats in zip(rows, all_stats)
        if OTHER_ALIGNMENT.get(row.method) != "undefined"  # shallow: undefined by definition
    )
    if reference == "bp":
        text += against_bp_lines(rows, effects, flags, cols.split)
    text += write_effects(
        effects,
        notes,
        root / "effects.csv",
        root / "figures" / "effects.png",
        name_header="experiment",
        rule=f"`fc-*` vs `{references['fc']}`, `conv-*` vs `{references['conv']}`",
        panels=["eval_top1", "cos_mean_points"],
        title="Best practices",
    )
    if figures:
        text += ["## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figures] + [""]
    if warnings:
        text += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    path = root / "report.md"
    path.write_text("\n".join(text))
    echo(table)
    if diverged:
        echo("* diverged seeds are counted but left out of the means: " + ", ".join(diverged))
    return path


def write_group_figures(root: Path, rows: Sequence[Row]) -> list[Path]:
    """One PNG per GROUPS entry with done runs; groups with no data are skipped."""
    by_name = {row.name: row for row in rows}
    folder = root / "figures"
    written = []
    for group, names in GROUPS.items():
        curves = {}
        for name in names:
            row = by_name.get(name)
            if row is None or not row.used:
                continue
            runs = [run for run, _ in row.used]
            setting = EXPERIMENTS.get(name, (name, {}))[0]
            other = OTHER_ALIGNMENT.get(row.method)
            curves[name] = {
                "label": f"{name}: {setting} ({len(runs)} seeds"
                + (f"; cos: {other}" if other else "")
                + ")",
                "runs": runs,
                "eval_label": f"{row.eval_split} top-1",
                "arch": row.config.get("arch"),
                "alignment": other != "undefined",
            }
        if not curves:
            continue
        folder.mkdir(exist_ok=True)
        path = folder / f"{group}.png"
        plot_group(path, group, curves)
        written.append(path)
    return written


# -- a per-method study: against BP ---------------------------------------------------------------
def by_architecture(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The rows with done seeds, per architecture (ARCH_NAMES order), in table order."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.used:
            groups.setdefault(str(row.setting("arch")), []).append(row)
    order = list(ARCH_NAMES)
    return dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def row_label(row: Row) -> str:
    """``DFA (fc-tanh), lr 0.03, 12 epochs``: the method and its own settings."""
    method = METHOD_NAMES.get(row.method, row.method)
    return f"{method} ({row.name}), lr {row.lrs}, {row.epochs} epochs"


def plot_top1_per_method(path: Path, rows: Sequence[Row]) -> Path:
    """One panel per architecture: eval top-1 against epoch for every experiment at its own
    lr and epochs, mean over done seeds, band = sample std over seeds."""
    groups = by_architecture(rows)
    fig = new_figure(6.0 * len(groups), 4.8)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    from matplotlib.ticker import MaxNLocator

    for ax, (arch, group) in zip(axes, groups.items()):
        for i, row in enumerate(group):
            runs = [run for run, _ in row.used]
            x, m, sd = epoch_curve(runs, lambda r: r.get("eval_top1"))
            color = f"C{i % 10}"
            ax.plot(x, m, color=color, lw=1.6, label=f"{row_label(row)}, {len(runs)} seeds")
            ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.18, lw=0)
        split = group[0].eval_split
        ax.set_title(f"{ARCH_NAMES.get(arch, arch)}: {split} top-1, each method at its own lr")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} top-1 (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Mean over done seeds, band = ± 1 sample std")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def against_bp_lines(
    rows: Sequence[Row], effects: Sequence, flags: Sequence, split: str
) -> list[str]:
    """The ``## Against BP`` section: per architecture, every method's settings, final top-1,
    difference from BP with its Welch interval, mean cos and convergence flags; then one
    sentence per architecture for DFA."""

    top1 = {e.name: e for e in effects if e.metric.key == "eval_top1"}
    flag_of = {row.name: f for row, f in zip(rows, flags)}
    lines = [
        "## Against BP",
        "",
        "Each method at its own learning rate and number of epochs (`lr`, `epochs`: those of "
        f"its runs). Difference = method − BP in {split} top-1 (percentage points), "
        "with its 95% Welch interval (Effects, below); **bold**: the interval excludes 0. "
        f"`mean cos`: `cos_mean` averaged over the feedback points ({BP_MARK}: the DFA "
        "signal on the BP net).",
        "",
    ]
    table, sentences = [], []
    for group in by_architecture(rows).values():
        for row in group:
            e = top1.get(row.name)
            ev = mean_std(r.get("eval_top1") for r in row.records)
            cos = mean_std(map(MEAN_COS.value, row.records))[0]
            diff = ci = "reference" if row.name in REFERENCES["bp"].values() else "-"
            if e is not None:
                diff, ci = difference_cells(e)
            table.append(
                [
                    arch_label(row.config),
                    METHOD_NAMES.get(row.method, row.method),
                    row.name,
                    row.lrs,
                    row.recipes,
                    row.epochs,
                    str(len(row.records)),
                    fmt_pm(ev[0], ev[1], 2),
                    diff,
                    ci,
                    cos_cell(cos, 3, row.method),
                    flag_of[row.name].cell(),
                    flag_of[row.name].unsteady_cell(),
                ]
            )
            if row.method == "dfa" and e is not None and e.clear is not None:
                where = "below" if e.interval.diff < 0 else "above"
                sentences.append(
                    f"- {arch_label(row.config)}: DFA ({row.name}) is "
                    f"{abs(e.interval.diff):.2f} points {where} BP ({e.reference}): DFA − BP = "
                    f"{difference_text(e)}."
                )
    head = ["architecture", "method", "experiment", "lr", "recipe", "epochs", "seeds"]
    head += [f"{split} top-1"]
    head += ["− BP", "95% CI", "mean cos", "unconverged", "unsteady"]
    return lines + [markdown_table(head, table), "", *sentences, *([""] if sentences else [])]
