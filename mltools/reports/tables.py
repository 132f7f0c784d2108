"""What every report shares: reading seeds, formatting numbers, Markdown and CSV tables,
figure canvases (DESIGN.md 6 and 8).

The rest of :mod:`mltools.reports`, :mod:`mltools.legacy.bottleneck_recovered`,
:mod:`mltools.cli` and :mod:`mltools.lr_grid` build on these helpers; this module imports none
of them, so every import points one way. No torch, no
pyplot.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from mltools.runs.runlog import Run, load_run

Echo = Callable[[str], None]

STATUS_ORDER = ("done", "diverged", "failed", "running", "unknown")
ARCH_NAMES = {
    "fc": "FC",
    "cnn": "CNN",
    "bottleneck": "bottleneck",
    "resnet": "ResNet",
    "transformer": "Transformer",
}
METHOD_NAMES = {
    "dfa": "DFA",
    "bp": "BP",
    "fa": "FA",
    "sign": "sign",
    "drtp": "DRTP",
    "shallow": "shallow",
    "brsf": "BRSF",
    "frsf": "FRSF",
}
# What a row's cosines measure, where it is not the method's own learning signal against the
# BP gradient (DESIGN.md 3, 7): a BP run delivers no signal of its own, so its cosine is that
# of the DFA signal on the BP-trained network (the paper's BP baselines), a different quantity;
# shallow delivers none at all, so its cosine is undefined.
OTHER_ALIGNMENT = {"bp": "DFA signal on the BP net", "shallow": "undefined"}
BP_MARK = "†"  # marks a BP row's cosines in tables


def own_alignment(method: str | None) -> bool:
    """Whether a run of ``method`` measures the alignment of its own learning signal."""
    return method not in OTHER_ALIGNMENT


def cos_cell(value: float | None, decimals: int, method: str | None) -> str:
    """A table cell of a cosine (or angle) of a ``method`` row: ``undefined`` for shallow,
    marked with BP_MARK for BP."""
    cell = fmt(value, decimals)
    if OTHER_ALIGNMENT.get(method) == "undefined":
        return "undefined" if cell else ""  # '' where the point does not exist
    return f"{cell} {BP_MARK}" if cell and method == "bp" else cell


# -- statistics -----------------------------------------------------------------------------------
def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1) and count of the finite values; std is nan for a single value,
    everything nan (count 0) for none. None and nan (a diverged metric) are skipped."""
    xs = np.array([x for x in map(number, values) if x is not None], dtype=float)
    if len(xs) == 0:
        return math.nan, math.nan, 0
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else math.nan, len(xs)


def number(x: object) -> float | None:
    """``x`` as a finite float, else None: a hand-edited or damaged record may hold anything."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def well_formed(items: object, index_key: str) -> list[dict]:
    """The entries of a record's list that are dicts with an int ``index_key``; a hand-edited or
    damaged record may hold anything."""
    if not isinstance(items, list):
        return []
    return [a for a in items if isinstance(a, dict) and isinstance(a.get(index_key), int)]


def alignment_of(record: dict) -> list[dict]:
    """The well-formed alignment entries of a record (each a dict with an int ``point``)."""
    return well_formed(record.get("alignment"), "point")


def config_point_blocks(config: dict | None) -> list[int] | None:
    """config.json's ``point_blocks``: the hidden block that each feedback point reads (None:
    the run predates it, or it is malformed; its points are then numbered as recorded)."""
    blocks = (config or {}).get("point_blocks")
    if isinstance(blocks, list) and all(
        isinstance(b, int) and not isinstance(b, bool) for b in blocks
    ):
        return blocks
    return None


def on_blocks(record: dict, blocks: Sequence[int] | None) -> dict:
    """``record`` with each alignment entry's ``point`` renumbered to ``blocks[point]``, the
    hidden block it reads, so that one column is one place in networks of other points."""
    if blocks is None:
        return record
    entries = [
        {**a, "point": blocks[a["point"]]} if 0 <= a["point"] < len(blocks) else a
        for a in alignment_of(record)
    ]
    return {**record, "alignment": entries}


def fmt(x: float | None, decimals: int) -> str:
    """Fixed decimals, so a table does not change with float noise; '' for a missing value."""
    return "" if x is None or not math.isfinite(x) else f"{x:.{decimals}f}"


def fmt_pm(mean: float, std: float, decimals: int) -> str:
    """``mean ± std``; ``mean ± -`` for one seed, '' for none."""
    if not math.isfinite(mean):
        return ""
    return f"{mean:.{decimals}f} ± {fmt(std, decimals) or '-'}"


# -- reading runs ---------------------------------------------------------------------------------
def seed_key(path: Path) -> tuple:
    """Sort ``seed10`` after ``seed9``."""
    m = re.fullmatch(r"seed(\d+)", path.name)
    return (0, int(m.group(1)), "") if m else (1, 0, path.name)


def load_seeds(folder: Path) -> list[Run]:
    """The ``seed*`` run folders of one experiment folder, in seed order."""
    return [load_run(p) for p in sorted(folder.glob("seed*"), key=seed_key) if p.is_dir()]


def status_counts(runs: Sequence[Run]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts


def fmt_counts(counts: dict[str, int]) -> str:
    """``3 done / 1 diverged``, plus any other status that occurs (``, 1 running``)."""
    text = f"{counts.get('done', 0)} done / {counts.get('diverged', 0)} diverged"
    others = sorted(
        (s for s in counts if s not in ("done", "diverged")),
        key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s),
    )
    return text + "".join(f", {counts[s]} {s}" for s in others)


def final_records(
    runs: Sequence[Run], epoch: int | None = None
) -> tuple[list[tuple[Run, dict]], list[str]]:
    """``(run, record)`` of each done run at ``epoch`` (its last epoch when None).

    The last epoch is ``config["epochs"]`` when given: a done run whose metrics lost the final
    line must not be averaged in at an earlier epoch.
    """
    used, warnings = [], []
    for run in runs:
        if run.status != "done":
            continue
        want = epoch if epoch is not None else (run.config or {}).get("epochs")
        record = run.at_epoch(want) if isinstance(want, int) else run.last
        if record is None:
            warnings.append(
                f"{run.path}: done but no record for epoch {want}; left out of the means"
            )
            continue
        used.append((run, record))
    return used, warnings


def point_stats(records: Sequence[dict]) -> dict[int, dict]:
    """Per feedback point: its name, mean and sample std of ``cos_mean``, mean ``angle_deg`` and
    mean ``undefined_frac`` (nan where the records predate it)."""
    by_point: dict[int, list[dict]] = {}
    for record in records:
        for a in alignment_of(record):
            by_point.setdefault(a["point"], []).append(a)
    stats = {}
    for point, items in sorted(by_point.items()):
        cos, cos_std, n = mean_std(a.get("cos_mean") for a in items)
        deg, _, _ = mean_std(a.get("angle_deg") for a in items)
        undefined, _, _ = mean_std(a.get("undefined_frac") for a in items)
        stats[point] = {
            "name": str(items[0].get("name", "")),
            "cos": cos,
            "cos_std": cos_std,
            "n": n,
            "deg": deg,
            "undefined": undefined,
        }
    return stats


def epoch_curve(
    runs: Sequence[Run], value: Callable[[dict], float | None]
) -> tuple[np.ndarray, ...]:
    """Epochs, mean and sample std (0 for one seed) of ``value(record)`` over ``runs``."""
    per_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.records:
            v = number(value(record))
            if v is not None:
                per_epoch.setdefault(record["epoch"], []).append(v)
    epochs = sorted(per_epoch)
    means = [float(np.mean(per_epoch[e])) for e in epochs]
    stds = [float(np.std(per_epoch[e], ddof=1)) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
    return np.array(epochs), np.array(means), np.array(stds)


def alignment_value(point: int, key: str = "cos_mean") -> Callable[[dict], float | None]:
    def value(record: dict) -> float | None:
        return next((a.get(key) for a in alignment_of(record) if a["point"] == point), None)

    return value


# -- writing tables -------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table with columns padded for the terminal."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def point_label(point: int) -> str:
    """Our points are 0-based in metrics and named h1, h2, ... (dfatools.alignment)."""
    return f"h{point + 1}"


# -- figures --------------------------------------------------------------------------------------
def legend_columns(labels: Sequence[str], width: float, most: int = 3) -> int:
    """Columns for a legend of ``labels`` under the axes of a figure ``width`` inches wide: as
    many as fit the longest label (at most about 0.09 inch a character at 10 pt, plus its line), at
    most ``most``, at least 1. More would push the outer entries off the figure."""
    longest = max((len(label) for label in labels), default=0)
    fit = int(width // (0.09 * longest + 0.6)) if longest else most
    return max(1, min(most, fit, len(labels)))


def legend_height(entries: int, columns: int) -> float:
    """Inches a legend of ``entries`` in ``columns`` adds below the axes (outside them, so it
    never covers a curve)."""
    return 0.25 * math.ceil(entries / columns)


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # imported here: reading runs needs no matplotlib

    return Figure(figsize=(width, height), layout="constrained")


def alignment_ylim(ax, lows: Iterable[float]) -> None:
    """cos lies in [-1, 1]; show [-0.1, 1] unless the data dip lower, so typical curves fill it."""
    low = min([-0.1, *[x - 0.05 for x in lows if math.isfinite(x)]])
    ax.set_ylim(max(-1.02, low), 1.02)
    ax.axhline(0.0, color="0.6", lw=0.8, zorder=0)
