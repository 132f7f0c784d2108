"""The learning-rate rule of our presets: one learning rate for every method, picked on the val
split.

For each learning rate of a grid, the reference experiments (``REFERENCES``) are trained once
(seed 0) with the preset's other settings in ``val`` mode, one results folder per rate::

    <grid>/lr<rate>/best_practices/<experiment>/seed0/

The chosen rate is the one with the highest mean final val top-1 over the references; a
reference that diverged or failed counts as 0%. The rule looks only at the references, never at
the experiments whose effects the study measures.

    python -m mltools.lr_grid results/lr-grid/fashion      # prints and writes lr_grid.md

No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path

from .cli import ArgumentParser
from .report import final_records, load_seeds, markdown_table, number

REFERENCES = ("fc-tanh", "fc-bp", "conv-tanh", "conv-bp")


def grid_scores(
    grid: Path, references: tuple[str, ...] = REFERENCES
) -> dict[float, dict[str, float]]:
    """``{lr: {reference: final val top-1}}`` for every ``lr<rate>`` folder under ``grid``."""
    scores: dict[float, dict[str, float]] = {}
    for folder in grid.glob("lr*"):
        m = re.fullmatch(r"lr([0-9.eE+-]+)", folder.name)
        if not (m and folder.is_dir()):
            continue
        row = {}
        for name in references:
            used, _ = final_records(load_seeds(folder / "best_practices" / name))
            value = number(used[0][1].get("eval_top1")) if used else None
            row[name] = 0.0 if value is None else value  # diverged, failed or missing: 0%
        scores[float(m.group(1))] = row
    return dict(sorted(scores.items()))


def choose(scores: dict[float, dict[str, float]]) -> float:
    """The rate with the highest mean over the references (the smaller rate on a tie)."""
    if not scores:
        raise ValueError("no lr<rate> folders with reference runs")
    return max(scores, key=lambda lr: (sum(scores[lr].values()) / len(scores[lr]), -lr))


def grid_table(scores: dict[float, dict[str, float]]) -> str:
    """Markdown: one row per rate, the references' final val top-1 and their mean."""
    best = choose(scores)
    names = list(next(iter(scores.values())))
    rows = [
        [
            f"{lr:g}" + (" (chosen)" if lr == best else ""),
            *(f"{row[n]:.2f}" for n in names),
            f"{sum(row.values()) / len(row):.2f}",
        ]
        for lr, row in scores.items()
    ]
    return markdown_table(["lr", *names, "mean"], rows)


def main() -> None:
    parser = ArgumentParser(
        prog="python -m mltools.lr_grid",
        description="Pick the learning rate of a grid by the rule above.",
    )
    parser.add_argument("grid", type=Path, help="folder holding lr<rate>/best_practices/...")
    grid = parser.parse_args().grid
    scores = grid_scores(grid)
    if not scores:
        parser.error(f"no lr<rate> folders under {grid}")
    text = (
        f"Final val top-1 (%) of the reference runs, seed 0, per learning rate. Chosen: the "
        f"highest mean, lr = {choose(scores):g}.\n\n{grid_table(scores)}"
    )
    (grid / "lr_grid.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
