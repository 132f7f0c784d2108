"""The language-model report (``language_model.py``, DESIGN.md 13): bits per character of every
method with its 95% Welch interval against BP, alignment per block, curves, sampled text.

Reads ``<out>/language_model/<method>/seed<k>/``; writes ``report.md``, ``summary.csv`` and
``figures/curves.png`` there. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mltools.reports.effects import (
    Effect,
    Metric,
    compare,
    difference_cells,
    difference_text,
)
from mltools.reports.flags import (
    Flags,
    convergence_flags,
    convergence_lines,
    unbounded_lines,
)
from mltools.reports.tables import (
    alignment_of,
    alignment_value,
    epoch_curve,
    fmt,
    fmt_counts,
    fmt_pm,
    load_seeds,
    markdown_table,
    mean_std,
    new_figure,
    number,
    point_stats,
    status_counts,
    write_csv,
)
from mltools.reports.tables import final_records as done_records
from mltools.runs.recipes import recipe_of
from mltools.runs.runlog import SAMPLES, Run
from mltools.studies.experiments import LANGUAGE_MODEL

FOLDER = LANGUAGE_MODEL
REFERENCE = "bp"
ORDER = ("bp", "dfa", "fa", "sign", "brsf", "frsf", "drtp", "shallow")


def collect(out: Path) -> dict[str, list[Run]]:
    """``{experiment: runs}`` under ``<out>/language_model``, BP first, then the family order."""
    root = Path(out) / FOLDER
    found = {p.name: load_seeds(p) for p in root.glob("*") if p.is_dir() and any(p.glob("seed*"))}
    rank = {m: i for i, m in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


BPC = Metric("eval_bpc", "eval bpc", lambda r: number(r.get("eval_bpc")), 3)
# The methods every other one is compared with: BP, and untrained blocks (shallow: only the
# embedding and the head learn), the floor a method must beat to say it trains the blocks.
REFERENCES = (REFERENCE, "shallow")
LABELS = {"bp": "BP", "shallow": "shallow"}


def bpc_effect(
    name: str, records: list[dict], reference: str, ref_records: list[dict]
) -> Effect | None:
    """Final eval bpc of ``records`` (the done seeds' final records) minus that of
    ``ref_records``, with its 95% Welch interval; None without reference runs or for the
    reference itself."""
    if not ref_records or name == reference:
        return None
    return compare(name, records, reference, ref_records, [BPC])[0]


@dataclass
class MethodRow:
    """One method's line: report.md's row, summary.csv's, its sentences against the
    references."""

    markdown: list[str]
    csv: list[object]
    flags: Flags
    sentences: list[str]


def method_row(
    name: str, group: list[Run], references: dict[str, list[dict]], echo: Callable
) -> MethodRow:
    """``references``: each reference method's final records (BP's, shallow's; empty when
    absent)."""
    used, warnings = done_records(group)
    for w in warnings:
        echo(f"warning: {w}")
    records = [r for _, r in used]
    flag = convergence_flags(used)
    bpc = mean_std(r.get("eval_bpc") for r in records)
    train = mean_std(r.get("train_bpc") for r in records)
    top1 = mean_std(r.get("eval_top1") for r in records)
    stats = point_stats(records)
    cos = mean_std(s["cos"] for s in stats.values())[0] if stats else math.nan
    cells: list[str] = []
    csv: list[object] = []
    sentences = []
    for reference, ref_records in references.items():
        effect = bpc_effect(name, records, reference, ref_records)
        diff = ci = "reference" if name == reference else "-"
        if effect is not None:
            diff, ci = difference_cells(effect)
            if effect.clear is not None:
                sentences.append(
                    f"- {name}: {bpc[0]:.3f} bits per character; {name} − {LABELS[reference]} = "
                    f"{difference_text(effect)}."
                )
        iv = effect.interval if effect else None
        cells += [diff, ci]
        csv += [fmt(iv.diff, 5), fmt(iv.low, 5), fmt(iv.high, 5)] if iv else ["", "", ""]
    configs = [r.config or {} for r, _ in used]
    lrs = "/".join(sorted({f"{c.get('lr'):g}" for c in configs if c.get("lr")}))
    recipes = "/".join(sorted({recipe_of(c)["name"] for c in configs}))
    epochs = "/".join(sorted({str(r["epoch"]) for r in records}))
    stream = mean_std(last_stream(r) for r in records)
    return MethodRow(
        [
            *(name, "/".join(sorted({layout(c) for c in configs})), lrs, recipes, epochs),
            *(fmt_counts(status_counts(group)), fmt_pm(bpc[0], bpc[1], 3), *cells),
            *(fmt_pm(top1[0], top1[1], 2), fmt_pm(train[0], train[1], 3), fmt(cos, 3)),
            " ".join(fmt(s["cos"], 2) for s in stats.values()),
            *(fmt(stream[0], 4), flag.cell(), flag.unsteady_cell(), flag.unbounded_cell()),
        ],
        [
            *(name, lrs, recipes, epochs, len(records), fmt(bpc[0], 5), fmt(bpc[1], 5)),
            *csv[:3],
            *(fmt(top1[0], 3), fmt(cos, 4), fmt(stream[0], 5)),
            *csv[3:],
        ],
        flag,
        sentences,
    )


def write_lm_report(out: Path, echo: Callable[[str], object] = print) -> Path:
    """Write the report of the runs under ``<out>/language_model``; returns report.md's path."""
    runs = collect(out)
    if not runs:
        raise FileNotFoundError(f"no language-model runs under {Path(out) / FOLDER}")
    root = Path(out) / FOLDER
    references = {m: [r for _, r in done_records(runs.get(m, []))[0]] for m in REFERENCES}
    head = ["method", "blocks", "lr", "recipe", "epochs", "seeds", "eval bpc", "− BP", "95% CI"]
    head += ["− shallow", "95% CI", "eval top-1", "train bpc", "mean cos", "blocks cos"]
    head += ["stream norm", "unconverged", "unsteady", "unbounded"]
    lines_of = [method_row(name, group, references, echo) for name, group in runs.items()]
    rows = [m.markdown for m in lines_of]
    flags = [m.flags for m in lines_of]
    sentences = [s for m in lines_of for s in m.sentences]
    write_csv(
        root / "summary.csv",
        ["method", "lr", "recipe", "epochs", "seeds_used", "eval_bpc_mean", "eval_bpc_std"]
        + ["bpc_minus_bp", "ci_low", "ci_high", "eval_top1_mean", "cos_mean", "stream_norm_last"]
        + ["bpc_minus_shallow", "shallow_ci_low", "shallow_ci_high"],
        [m.csv for m in lines_of],
    )
    figure = plot_curves(root / "figures" / "curves.png", runs)
    lines = [
        "# Language-model report",
        "",
        f"Runs read from `{root}/<method>/seed<k>/`. Values at each run's last epoch, `mean ± "
        "std` over done seeds. Bits per character (bpc) = mean cross-entropy per character in "
        "nats / ln 2, on the evaluation split; `− BP`, `− shallow`: the method's mean minus "
        "that of BP or of untrained blocks (shallow), with its 95% Welch interval (lower is "
        "better). `blocks cos`: each block's mean alignment "
        "cosine, every token a sample (for BP, the DFA signal measured on the BP network). "
        "`blocks`: the block layout (pre- or post-norm), the feedback points and where DFA "
        "takes its error (logits, or the head's input: hidden). `stream norm`: the mean norm "
        "per token of the residual stream after the last block, on the evaluation split.",
        "",
        markdown_table(head, rows),
        "",
        *sentences,
        *([""] if sentences else []),
        *convergence_lines(flags, "eval"),
        *unbounded_lines(flags),
        *([f"![Curves](figures/{figure.name})", ""] if figure else []),
        "## Samples",
        "",
        "Seed 0 of each method continues the same prompt (the evaluation text's first "
        "characters), sampling from its softmax with the same seed.",
        "",
    ]
    for name, group in runs.items():
        sample = next((r.path / SAMPLES for r in group if (r.path / SAMPLES).exists()), None)
        if sample is not None:
            text = sample.read_text(encoding="utf-8", errors="replace")
            lines += [f"**{name}** ({sample.parent.name})", "", "```text", text, "```", ""]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    echo(f"report: {path}")
    return path


def layout(config: dict) -> str:
    """``post-norm, macro, error at hidden``: a run's blocks as config.json records them (runs
    from before the layouts existed were pre-norm with the error at the logits)."""
    model = config.get("model") or {}
    return (
        f"{model.get('norm', 'pre')}-norm, {model.get('points', 'macro')}, "
        f"error at {model.get('error_at', 'logits')}"
    )


def last_stream(record: dict) -> float | None:
    """The record's residual-stream norm after the last block (None before it was recorded)."""
    stream = record.get("stream_norm")
    return stream[-1] if stream else None


def plot_curves(path: Path, runs: dict[str, list[Run]]) -> Path | None:
    """Eval bpc, the mean alignment over blocks and the residual stream after the last block
    (log scale), against epochs, one line per method."""
    fig = new_figure(15, 4)
    bpc_ax, cos_ax, stream_ax = fig.subplots(1, 3)
    drawn = False
    for name, group in runs.items():
        epochs, mean, _ = epoch_curve(group, lambda r: r.get("eval_bpc"))
        if len(epochs):
            bpc_ax.plot(epochs, mean, label=name)
            drawn = True
        points = sorted({a["point"] for run in group for r in run.records for a in alignment_of(r)})
        curves = [epoch_curve(group, alignment_value(p)) for p in points]
        if curves and len(curves[0][0]):
            cos_ax.plot(curves[0][0], sum(c[1] for c in curves) / len(curves), label=name)
        epochs, mean, _ = epoch_curve(group, last_stream)
        if len(epochs):
            stream_ax.plot(epochs, mean, label=name)
    if not drawn:
        return None
    bpc_ax.set(xlabel="epoch", ylabel="eval bits per character", title="bpc")
    cos_ax.set(xlabel="epoch", ylabel="mean cos over blocks", title="alignment")
    stream_ax.set(
        xlabel="epoch", ylabel="mean norm per token", title="residual stream after the last block"
    )
    if stream_ax.lines:
        stream_ax.set_yscale("log")
    bpc_ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
