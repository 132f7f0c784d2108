"""The learning-rate rules of our presets, on the val split.

**Shared rate** (the ``quick`` and ``fashion`` presets). For each learning rate of a grid, the
reference experiments (``REFERENCES``) are trained once (seed 0) with the preset's other
settings in ``val`` mode, one results folder per rate::

    <grid>/lr<rate>/best_practices/<experiment>/seed0/   (language models: language_model/<method>/)

The chosen rate is the one with the highest mean final val top-1 over the references; a
reference that diverged or failed counts as 0%. The rule looks only at the references, never at
the experiments whose effects the study measures.

**Per method** (``--per-method``; DESIGN.md 10). Every experiment of the grid gets its own
rate and number of epochs, by one of two rules (``--rule``):

* ``steady`` (the default): the rate whose runs have the highest mean val top-1 over their last
  3 epochs, averaged over seeds 0 and 1 (a diverged or failed seed counts as 0%; the smaller
  rate on a tie). Under a recipe whose schedule decays to 0, the last epochs are the settled
  end of training, and neither one lucky epoch nor one lucky seed decides. Epochs: the runs'
  own (the stated budget the schedule is laid out over).
* ``final`` (the ``fashion-fair`` study's, kept to reproduce it): the highest final val top-1
  of the seed-0 run; epochs where early stopping stops on that run: the first epoch E at which
  :func:`mltools.reports.flags.unconverged` no longer flags it (patience 2 epochs, min gain 1
  point), up to the run's epochs (the stated maximum).

Under either, when the chosen rate is the highest (lowest) of the experiment's grid, the rate
one half-decade beyond (the next of 1, 3, 10, 30, ...) is listed to run (``--next``), and the
choice stands only once it is not at an edge.

The choices go to a JSON file that the preset reads (``--choices``; an experiment with grid
runs still to do is left out of it), and the grid's records to ``<grid>/per_method.md`` and
``per_method.csv``.

    python -m mltools.lr_grid results/lr-grid/fashion      # shared: prints, writes lr_grid.md
    python -m mltools.lr_grid results/field-grid --per-method --next   # runs still to do
    python -m mltools.lr_grid results/field-grid --per-method --choices choices.json
    python -m mltools.lr_grid results/fair-grid --per-method --rule final --choices choices.json

No torch here.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mltools.cli import ArgumentParser
from mltools.reports.flags import (
    unconverged,
)
from mltools.reports.tables import final_records, fmt, load_seeds, markdown_table, number, write_csv
from mltools.runs.runlog import Run, load_run
from mltools.studies.experiments import BEST_PRACTICES, LANGUAGE_MODEL

REFERENCES = ("fc-tanh", "fc-bp", "conv-tanh", "conv-bp")
SCORED = ("done", "diverged", "failed")  # a run in another state is not finished: not scored


def rate_folders(grid: Path) -> dict[float, Path]:
    """``{lr: <grid>/lr<rate>}`` for every ``lr<rate>`` folder, by rate."""
    folders = {}
    for folder in grid.glob("lr*"):
        m = re.fullmatch(r"lr([0-9.eE+-]+)", folder.name)
        if m and folder.is_dir():
            folders[float(m.group(1))] = folder
    return dict(sorted(folders.items()))


# -- the shared rate ------------------------------------------------------------------------------
def grid_scores(
    grid: Path, references: tuple[str, ...] = REFERENCES
) -> dict[float, dict[str, float]]:
    """``{lr: {reference: final val top-1}}`` for every ``lr<rate>`` folder under ``grid``."""
    scores: dict[float, dict[str, float]] = {}
    for lr, folder in rate_folders(grid).items():
        row = {}
        for name in references:
            used, _ = final_records(load_seeds(folder / BEST_PRACTICES / name))
            value = number(used[0][1].get("eval_top1")) if used else None
            row[name] = 0.0 if value is None else value  # diverged, failed or missing: 0%
        scores[lr] = row
    return scores


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


# -- per method -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridRun:
    """One seed-0 run of the grid. ``score``: final val top-1, 0 when diverged or failed, None
    while not finished. ``stop``: early stopping's epoch (None unless done) and ``stop_top1``
    the val top-1 there; ``converged``: whether the rule stopped it by its last epoch; ``best``:
    the epoch of its best val top-1 up to ``stop``."""

    experiment: str
    lr: float
    method: str
    status: str
    epochs: int | None
    score: float | None
    stop: int | None = None
    stop_top1: float | None = None
    converged: bool = False
    best: int | None = None


def stop_epoch(run: Run, last: int) -> tuple[int, bool]:
    """The first epoch E (of 1..``last``) at which early stopping's rule does not flag ``run``
    as still rising, and True; ``(last, False)`` when it is flagged (or unknown) up to ``last``."""
    for epoch in range(1, last + 1):
        record = run.at_epoch(epoch)
        if record is not None and unconverged(run, record)[0] is False:
            return epoch, True
    return last, False


def grid_run(name: str, lr: float, run: Run) -> GridRun:
    config = run.config or {}
    epochs = config.get("epochs") if isinstance(config.get("epochs"), int) else None
    method = str(config.get("method", ""))
    if run.status not in SCORED:
        return GridRun(name, lr, method, run.status, epochs, None)
    used, _ = final_records([run])
    top1 = number(used[0][1].get("eval_top1")) if used else None
    if top1 is None or epochs is None:  # diverged, failed, or done without its final record
        return GridRun(name, lr, method, run.status, epochs, 0.0)
    stop, converged = stop_epoch(run, epochs)
    top1s = {r["epoch"]: number(r.get("eval_top1")) for r in run.records if r["epoch"] <= stop}
    known = [e for e, v in top1s.items() if v is not None]
    best = max(known, key=lambda e: (top1s[e], -e), default=None)
    return GridRun(name, lr, method, run.status, epochs, top1, stop, top1s[stop], converged, best)


# The per-method rule reads the runs of either script: experiments of best_practices.py,
# methods of language_model.py.
SWEEPS = (BEST_PRACTICES, LANGUAGE_MODEL)

STEADY_SEEDS = 2  # the steady rule averages seeds 0 and 1 ...
STEADY_SPAN = 3  # ... over their last 3 epochs


def last_epochs_top1(run: Run) -> float | None:
    """The mean val top-1 of a finished run over its last STEADY_SPAN epochs (all of them when
    it ran fewer): 0 when it diverged or failed, None while it is not finished or an epoch's
    val top-1 is missing."""
    if run.status not in SCORED:
        return None
    used, _ = final_records([run])
    if run.status != "done" or not used:
        return 0.0
    last = used[0][1]["epoch"]
    span = min(STEADY_SPAN, last)
    values = [
        number((run.at_epoch(e) or {}).get("eval_top1")) for e in range(last - span + 1, last + 1)
    ]
    if None in values:
        return None
    return sum(values) / span  # type: ignore[arg-type]


def steady_run(name: str, lr: float, seeds: list[Run]) -> GridRun:
    """Seeds 0 and 1 of one experiment at one rate, as one GridRun: ``score`` the steady rule's
    (None until both are finished), ``epochs`` seed 0's, ``converged`` when no seed that
    finished is flagged by :func:`mltools.reports.flags.unconverged`."""
    config = seeds[0].config or {}
    epochs = config.get("epochs") if isinstance(config.get("epochs"), int) else None
    method = str(config.get("method", ""))
    status = "/".join(run.status for run in seeds)
    scores = [last_epochs_top1(run) for run in seeds]
    if len(seeds) < STEADY_SEEDS or None in scores:
        return GridRun(name, lr, method, status, epochs, None)
    score = sum(scores) / STEADY_SEEDS  # type: ignore[arg-type]
    finals = [(run, used[0][1]) for run in seeds if (used := final_records([run])[0])]
    converged = not any(unconverged(run, record)[0] for run, record in finals)
    return GridRun(name, lr, method, status, epochs, score, None, score, converged)


def method_runs(grid: Path, rule: str = "steady") -> dict[str, dict[float, GridRun]]:
    """``{experiment: {lr: its grid run}}`` for every experiment found under the grid's rates:
    the seed-0 run (rule ``final``), or seeds 0 and 1 together (rule ``steady``)."""
    runs: dict[str, dict[float, GridRun]] = {}
    for lr, folder in rate_folders(grid).items():
        for path in sorted(p for sweep in SWEEPS for p in (folder / sweep).glob("*/seed0")):
            if not path.is_dir():
                continue
            name = path.parent.name
            if rule == "final":
                runs.setdefault(name, {})[lr] = grid_run(name, lr, load_run(path))
                continue
            seeds = [path.parent / f"seed{k}" for k in range(STEADY_SEEDS)]
            loaded = [load_run(p) for p in seeds if p.is_dir()]
            runs.setdefault(name, {})[lr] = steady_run(name, lr, loaded)
    return dict(sorted(runs.items()))


def half_decade(lr: float, up: bool) -> float:
    """The rate one half-decade (a factor ~3.16) beyond ``lr`` on the grid 1, 3, 10, 30, ...:
    0.3 -> 1 (up), 0.003 -> 0.001 (down)."""
    k = round(2 * math.log10(lr)) + (1 if up else -1)
    return float(f"{10 ** (k / 2):.1g}")


@dataclass(frozen=True)
class Choice:
    """An experiment's rate and epochs, and the rates still to run before they stand."""

    experiment: str
    run: GridRun
    next_rates: tuple[float, ...]

    @property
    def lr(self) -> float:
        return self.run.lr

    @property
    def epochs(self) -> int:
        return self.run.stop if self.run.stop is not None else self.run.epochs

    def as_json(self) -> dict:
        return {
            "method": self.run.method,
            "lr": self.lr,
            "epochs": self.epochs,
            "max_epochs": self.run.epochs,
            "val_top1_final": self.run.score,
            "val_top1_at_epochs": self.run.stop_top1,
            "converged": self.run.converged,
        }


def choose_per_method(runs: dict[str, dict[float, GridRun]]) -> dict[str, Choice]:
    """Each experiment's choice by the per-method rule; experiments without a finished run are
    left out."""
    choices = {}
    for name, by_lr in runs.items():
        scored = {lr: r for lr, r in by_lr.items() if r.score is not None}
        if not scored:
            continue
        best = max(scored, key=lambda lr: (scored[lr].score, -lr))
        rates = sorted(scored)
        beyond = [half_decade(best, up=True)] if best == rates[-1] else []
        beyond = ([half_decade(best, up=False)] if best == rates[0] else []) + beyond
        choices[name] = Choice(name, scored[best], tuple(beyond))
    return choices


def pending(runs: dict[str, dict[float, GridRun]], choices: dict[str, Choice]) -> list[GridRun]:
    """Runs to start or finish before the choices stand: the rates beyond an edge (with the
    epochs of the experiment's runs), and unfinished runs of the grid."""
    todo = [r for by_lr in runs.values() for r in by_lr.values() if r.score is None]
    for name, choice in choices.items():
        for lr in choice.next_rates:
            if lr not in runs[name]:
                todo.append(GridRun(name, lr, choice.run.method, "new", choice.run.epochs, None))
    return todo


def per_method_table(runs: dict[str, dict[float, GridRun]], choices: dict[str, Choice]) -> str:
    """Markdown: one row per experiment, its final val top-1 at every rate (chosen in bold),
    the chosen rate, epochs and what is still to run."""
    rates = sorted({lr for by_lr in runs.values() for lr in by_lr})
    rows = []
    for name, by_lr in runs.items():
        choice = choices.get(name)
        cells = []
        for lr in rates:
            r = by_lr.get(lr)
            cell = "" if r is None else (f"({r.status})" if r.score is None else f"{r.score:.2f}")
            if r is not None and r.status in ("diverged", "failed"):
                cell += f" ({r.status})"
            cells.append(f"**{cell}**" if choice and choice.lr == lr else cell)
        if choice is None:
            rows.append([name, "", *cells, "", "", "", "", "no finished run"])
            continue
        run = choice.run
        note = (
            f"edge: run lr {', '.join(f'{x:g}' for x in choice.next_rates)}"
            if choice.next_rates
            else ""
        )
        if not run.converged:
            note = "; ".join(filter(None, [note, f"still rising at epoch {run.epochs}"]))
        rows.append(
            [
                name,
                run.method,
                *cells,
                f"{run.lr:g}",
                str(choice.epochs),
                fmt(run.stop_top1, 2),
                "" if run.best is None else str(run.best),
                note,
            ]
        )
    head = ["experiment", "method", *(f"{lr:g}" for lr in rates), "lr", "epochs"]
    return markdown_table([*head, "val top-1 at epochs", "best", "note"], rows)


def write_per_method_records(grid: Path, runs: dict[str, dict[float, GridRun]], choices) -> None:
    """``per_method.csv``: one row per grid run, with the rule's inputs and which run is chosen."""
    head = ["experiment", "method", "lr", "status", "epochs", "final_val_top1", "stop_epoch"]
    head += ["val_top1_at_stop", "converged", "best_epoch", "chosen"]
    rows = [
        [
            r.experiment,
            r.method,
            f"{r.lr:g}",
            r.status,
            r.epochs,
            fmt(r.score, 4),
            "" if r.stop is None else r.stop,
            fmt(r.stop_top1, 4),
            r.converged if r.stop is not None else "",
            "" if r.best is None else r.best,
            name in choices and choices[name].lr == r.lr,
        ]
        for name, by_lr in runs.items()
        for r in by_lr.values()
    ]
    write_csv(grid / "per_method.csv", head, rows)


# -- the choices file -----------------------------------------------------------------------------
RULES = {
    "steady": (
        "per experiment, on the val split: the rate whose seeds 0 and 1 have the highest mean "
        f"val top-1 over their last {STEADY_SPAN} epochs (diverged or failed: 0%), on a grid "
        "extended by half-decades until that rate is not at an edge; epochs: those of the grid "
        "runs, the budget the recipe's schedule decays over "
        "(python -m mltools.lr_grid --per-method --rule steady)"
    ),
    "final": (
        "per experiment, on the val split: the rate of its seed-0 run with the highest final "
        "val top-1 (diverged or failed: 0%), on a grid extended by half-decades until that rate "
        "is not at an edge; epochs: where early stopping (patience 2 epochs, min gain 1 point) "
        "stops on that run, up to max_epochs (python -m mltools.lr_grid --per-method --rule final)"
    ),
}
CAPTIONS = {
    "steady": f"Mean val top-1 (%) over the last {STEADY_SPAN} epochs and seeds 0 and 1 at "
    "each rate; chosen in bold; `epochs`: the runs' epochs, `val top-1 at epochs` the chosen "
    "score.",
    "final": "Final val top-1 (%) of each seed-0 run at each rate; chosen in bold; `epochs`: "
    "the chosen number of epochs, `val top-1 at epochs` the chosen run's val top-1 there, "
    "`best` the epoch of its best val top-1 up to there.",
}


def write_choices(path: Path, grid: Path, choices: dict[str, Choice], rule: str) -> None:
    data = {
        "rule": RULES[rule],
        "grid": grid.as_posix(),
        "experiments": {name: c.as_json() for name, c in choices.items()},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def refuse_single_seed(parser: ArgumentParser, grid: Path, runs: dict) -> None:
    """The steady rule scores seeds 0 and 1 together: a grid of seed 0 alone (an older grid,
    or one run with ``--seeds 1``) can never be scored by it, so say so rather than wait."""
    folders = rate_folders(grid)
    single = [
        name
        for name, by_lr in runs.items()
        if not any(
            (folders[lr] / sweep / name / "seed1").is_dir() for lr in by_lr for sweep in SWEEPS
        )
    ]
    if single:
        parser.error(
            f"the steady rule averages seeds 0 and 1, and {grid} has seed 0 alone of "
            f"{', '.join(single)}: run the grid with --seeds 2, or choose with --rule final"
        )


# -- command line ---------------------------------------------------------------------------------
def per_method(
    parser: ArgumentParser, grid: Path, choices_path: Path | None, next_only: bool, rule: str
):
    """The per-method mode: prints the table (or, ``next_only``, the runs still to do), writes
    the records beside the grid and the choices to ``choices_path`` once they stand."""
    runs = method_runs(grid, rule)
    if not runs:
        parser.error(f"no lr<rate>/{{{','.join(SWEEPS)}}}/<experiment>/seed0 runs under {grid}")
    if rule == "steady":
        refuse_single_seed(parser, grid, runs)
    choices = choose_per_method(runs)
    todo = pending(runs, choices)
    if next_only:
        print("".join(f"{r.experiment} {r.lr:g} {r.epochs}\n" for r in todo), end="")
        return
    text = (
        f"Per-method choice ({RULES[rule]}). {CAPTIONS[rule]}\n\n"
        f"{per_method_table(runs, choices)}\n"
    )
    (grid / "per_method.md").write_text(text)
    write_per_method_records(grid, runs, choices)
    print(text, end="")
    if choices_path is None:
        return
    waiting = sorted({r.experiment for r in todo})
    standing = {name: c for name, c in choices.items() if name not in waiting}
    if not standing:
        # An empty file would make the preset run nothing; the one there stays as it was.
        parser.error(
            f"no experiment's choice stands yet, {choices_path} not written: finish the grid "
            f"runs first (--next lists them)"
        )
    write_choices(choices_path, grid, standing, rule)
    print(f"choices of {len(standing)} experiment(s) written to {choices_path}")
    if waiting:
        print(
            f"left out of {choices_path}, with grid runs still to run or finish (--next): "
            f"{' '.join(waiting)}",
            file=sys.stderr,
        )


def main() -> None:
    parser = ArgumentParser(
        prog="python -m mltools.lr_grid",
        description="Pick learning rates (and, per method, epochs) of a grid by the rules above.",
    )
    parser.add_argument("grid", type=Path, help="folder holding lr<rate>/best_practices/...")
    parser.add_argument(
        "--per-method", action="store_true", help="a rate and epochs for every experiment"
    )
    parser.add_argument(
        "--next",
        action="store_true",
        help="with --per-method: print only the runs still to do, one 'EXPERIMENT LR EPOCHS' "
        "a line (nothing once every choice stands)",
    )
    parser.add_argument(
        "--choices",
        type=Path,
        metavar="JSON",
        help="with --per-method: write the choices there (of the experiments with no grid run "
        "left to do)",
    )
    parser.add_argument(
        "--rule",
        choices=list(RULES),
        default="steady",
        help="with --per-method: steady (default: the mean of the last 3 epochs over seeds 0 "
        "and 1) or final (seed 0's final epoch, epochs by early stopping; the fashion-fair study)",
    )
    args = parser.parse_args()
    if (args.next or args.choices) and not args.per_method:
        parser.error("--next and --choices go with --per-method")
    if args.per_method:
        per_method(parser, args.grid, args.choices, args.next, args.rule)
        return
    scores = grid_scores(args.grid)
    if not scores:
        parser.error(f"no lr<rate> folders under {args.grid}")
    text = (
        f"Final val top-1 (%) of the reference runs, seed 0, per learning rate. Chosen: the "
        f"highest mean, lr = {choose(scores):g}.\n\n{grid_table(scores)}"
    )
    (args.grid / "lr_grid.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
