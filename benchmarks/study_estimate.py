"""Estimate the paper study's wall time from timed slices of it (benchmarks/gpu_check.sh).

Inputs are the run folders of short sweeps of the paper preset (``best_practices.py --preset
paper --dataset synthetic ... --jobs N``, one per N, and one ``bottleneck.py`` sweep with
``--jobs 1``), each with its measured wall time, and the wall time of a sweep with nothing left
to train. The model, fitted to those measurements:

    wall(sweep, N jobs) = F_N + sum over runs of (t0[arch] + E * t[arch] + (E + 1) * k) / N

* ``t0``, ``t``: median ``time_s`` of epoch 0 (evaluation only) and of a training epoch, from
  the slice's metrics.jsonl, so measured under the contention of N jobs on the device (the
  slice must keep N runs of a net training at once: gpu_check.sh gives it 2N seeds);
* ``k``: time per epoch spent outside ``time_s`` (checkpoint, metrics and log writes), from the
  ``--jobs 1`` slice: its wall time minus ``F`` and the epochs' time, per epoch record;
* ``F``: a sweep's fixed cost (start-up, data loading, report), the wall time of a sweep with
  nothing to train; ``F_N`` adds the start of N worker processes: the N-job slice's wall time
  minus its runs' share.

The bottleneck net has the FC net's layer sizes: its ``--jobs N`` epoch times are its ``--jobs 1``
ones scaled as the FC ones scale. No torch here.

    python benchmarks/study_estimate.py --fixed 9.1 --slice 1 DIR1 40.2 --slice 4 DIR4 25.3 \\
        --bottleneck DIRB --markdown estimate.md --json estimate.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# Run as `python benchmarks/<name>.py` from a checkout: the packages live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltools.runs import runlog
from mltools.studies.experiments import (
    BEST_PRACTICES_PRESETS,
    BOTTLENECK_PRESETS,
    DEFAULT_EXPERIMENTS,
    EXPERIMENTS,
)

NOT_PAPER_ROWS = ("conv-tanh-2019",)  # the 2019 code's CNN placement, not a row of the paper
BOTTLENECK_INITS = ("std", "pai")  # bottleneck.py's default --init
FULL_TRAIN_SET, FULL_EVAL_SET = 50_000, 10_000  # synthetic and CIFAR-10 alike


@dataclass
class Slice:
    """One timed sweep: its ``--jobs``, wall time and runs as read back."""

    jobs: int
    wall_s: float
    runs: list[runlog.Run]

    @property
    def timed_s(self) -> float:
        """Seconds inside the runs' epoch records (``time_s``)."""
        return sum(r["time_s"] for run in self.runs for r in run.records)

    @property
    def records(self) -> int:
        return sum(len(run.records) for run in self.runs)


@dataclass
class Sweep:
    """A sweep of the study: how many runs of each architecture, and their epochs."""

    label: str
    runs: dict[str, int]
    epochs: int


def read_runs(out: Path) -> list[runlog.Run]:
    """Every run folder under a sweep's ``--out`` (``<script>/<experiment>/seed<k>``)."""
    runs = [runlog.load_run(p.parent) for p in sorted(out.glob("*/*/seed*/" + runlog.CONFIG))]
    return [run for run in runs if run.config is not None and run.records]


def epoch_times(runs: list[runlog.Run]) -> dict[str, tuple[float, float]]:
    """Per architecture: median ``time_s`` of epoch 0 and of the training epochs."""
    first: dict[str, list[float]] = {}
    later: dict[str, list[float]] = {}
    for run in runs:
        arch = run.config["arch"]
        for r in run.records:
            (first if r["epoch"] == 0 else later).setdefault(arch, []).append(r["time_s"])
    return {
        arch: (statistics.median(first[arch]), statistics.median(later[arch]))
        for arch in later
        if arch in first
    }


def overhead_per_epoch(serial: Slice, fixed_s: float) -> float:
    """``k``: seconds per epoch record outside ``time_s``, from a ``--jobs 1`` slice."""
    return max(0.0, (serial.wall_s - fixed_s - serial.timed_s) / serial.records)


def fixed_cost(part: Slice, fixed_s: float, k: float) -> float:
    """``F_N``: the slice's wall time left once its runs' share is taken out (at least ``F``)."""
    share = (part.timed_s + k * part.records) / part.jobs
    return max(fixed_s, part.wall_s - share)


def with_bottleneck(times: dict, serial_times: dict, bottleneck: tuple[float, float]) -> dict:
    """``times`` plus the bottleneck net's, scaled from ``--jobs 1`` as the FC net's scale."""
    scale = [now / then for now, then in zip(times["fc"], serial_times["fc"])]
    return {**times, "bottleneck": tuple(b * s for b, s in zip(bottleneck, scale))}


def study() -> list[Sweep]:
    """The paper study's sweeps, from the presets and experiment list the scripts use."""
    bp, bn = BEST_PRACTICES_PRESETS["paper"], BOTTLENECK_PRESETS["paper"]

    def count(names) -> dict[str, int]:
        runs: dict[str, int] = {}
        for name in names:
            arch = EXPERIMENTS[name][1]["arch"]
            runs[arch] = runs.get(arch, 0) + bp.seeds
        return runs

    paper_rows = [name for name in DEFAULT_EXPERIMENTS if name not in NOT_PAPER_ROWS]
    bottleneck_runs = len(bn.bottleneck_sizes) * len(BOTTLENECK_INITS) * bn.seeds
    return [
        Sweep(
            f"best_practices.py, the paper's {len(paper_rows)} rows", count(paper_rows), bp.epochs
        ),
        Sweep(
            f"best_practices.py, its default {len(DEFAULT_EXPERIMENTS)} experiments",
            count(DEFAULT_EXPERIMENTS),
            bp.epochs,
        ),
        Sweep("bottleneck.py", {"bottleneck": bottleneck_runs}, bn.epochs),
    ]


def estimate_s(sweep: Sweep, times: dict, k: float, fixed_s: float, jobs: int) -> float:
    per_run = {
        arch: t0 + sweep.epochs * t + (sweep.epochs + 1) * k for arch, (t0, t) in times.items()
    }
    return fixed_s + sum(n * per_run[arch] for arch, n in sweep.runs.items()) / jobs


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def describe(runs: list[runlog.Run]) -> dict:
    """Where and at what size the slices ran, from a run's config.json."""
    config = runs[0].config
    return {
        "device": config.get("device"),
        "device_name": config.get("device_name"),
        "torch": config.get("versions", {}).get("torch"),
        "dataset": config.get("dataset"),
        "train_samples": config.get("train_samples") or FULL_TRAIN_SET,
        "eval_samples": config.get("eval_samples") or FULL_EVAL_SET,
    }


def compute(slices: list[Slice], fixed_s: float, bottleneck: list[runlog.Run]) -> dict:
    """Every figure of the estimate, as one JSON-ready dict."""
    serial = next((s for s in slices if s.jobs == 1), None)
    if serial is None:
        raise ValueError("the --jobs 1 slice is needed: it gives the per-epoch overhead")
    k = overhead_per_epoch(serial, fixed_s)
    serial_times = epoch_times(serial.runs)
    bottleneck_times = epoch_times(bottleneck).get("bottleneck")
    missing = [a for a in ("fc", "cnn") if a not in serial_times]
    if missing or bottleneck_times is None:
        raise ValueError(
            f"no finished epochs for {missing or ['bottleneck']}: see the slices' logs"
        )
    per_jobs, incomplete = {}, []
    for part in slices:
        times = epoch_times(part.runs)
        if any(arch not in times for arch in ("fc", "cnn")):
            incomplete.append(part.jobs)  # a failed or cut-short slice: its --jobs is left out
            continue
        times = with_bottleneck(times, serial_times, bottleneck_times)
        fixed = fixed_cost(part, fixed_s, k)
        per_jobs[part.jobs] = {
            "wall_s": part.wall_s,
            "fixed_s": fixed,
            "epoch_s": {arch: {"epoch0": t0, "epoch": t} for arch, (t0, t) in times.items()},
            "estimate_s": {sw.label: estimate_s(sw, times, k, fixed, part.jobs) for sw in study()},
        }
    return {
        "setup": describe(serial.runs),
        "fixed_s": fixed_s,
        "overhead_per_epoch_s": k,
        "sweeps": [vars(sw) for sw in study()],
        "jobs": per_jobs,
        "incomplete_jobs": incomplete,
    }


def markdown(result: dict) -> str:
    """estimate.md: the measured figures, then the estimate table and how it was made."""
    setup, jobs = result["setup"], sorted(result["jobs"], key=int)
    sweeps = result["sweeps"]
    lines = [
        "# Wall-time estimate of the paper study",
        "",
        f"Measured on {setup['device_name']} ({setup['device']}), torch {setup['torch']}, with "
        f"`--dataset {setup['dataset']}`: {setup['train_samples']} training samples per epoch, "
        f"{setup['eval_samples']} evaluated, batch 128.",
    ]
    if (setup["train_samples"], setup["eval_samples"]) != (FULL_TRAIN_SET, FULL_EVAL_SET):
        lines.append(
            f"**Shrunk sizes (`--small`): the figures below are for those epochs, not the "
            f"paper's {FULL_TRAIN_SET} + {FULL_EVAL_SET} samples; they check the pipeline, "
            "they do not estimate the paper study.**"
        )
    lines += ["", "| --jobs | net | epoch 0 (s) | training epoch (s) |", "|---|---|---|---|"]
    for n in jobs:
        for arch, t in result["jobs"][n]["epoch_s"].items():
            lines.append(f"| {n} | {arch} | {t['epoch0']:.2f} | {t['epoch']:.2f} |")
    lines += [
        "",
        f"Per sweep: fixed cost F = {result['fixed_s']:.1f} s (a sweep with nothing to "
        f"train); with workers: "
        + ", ".join(f"--jobs {n}: {result['jobs'][n]['fixed_s']:.1f} s" for n in jobs)
        + f". Per epoch outside its timed part (checkpoint, logs): k = "
        f"{result['overhead_per_epoch_s']:.3f} s.",
        "",
    ]
    lines += [
        "| sweep | runs x epochs | " + " | ".join(f"--jobs {n}" for n in jobs) + " | best |",
        "|---|---|" + "---|" * (len(jobs) + 1),
    ]
    for sweep in sweeps:
        lines.append(
            row(
                sweep["label"],
                f"{sum(sweep['runs'].values())} x {sweep['epochs']}",
                [result["jobs"][n]["estimate_s"][sweep["label"]] for n in jobs],
                jobs,
            )
        )
    paper, bottleneck = sweeps[0], sweeps[2]
    totals = [
        sum(result["jobs"][n]["estimate_s"][s["label"]] for s in (paper, bottleneck)) for n in jobs
    ]
    lines.append(
        row(
            "the paper study: the paper's rows, then the bottleneck sweep",
            f"{sum(paper['runs'].values())} + {sum(bottleneck['runs'].values())} runs",
            totals,
            jobs,
        )
    )
    lines += [
        "",
        "How: wall(sweep, N) = F_N + sum over runs (t0[net] + E x t[net] + (E + 1) x k) / N, "
        "with t0 and t the median epoch-0 and training-epoch `time_s` of the --jobs N slice "
        "(measured under that contention), E the preset's epochs, and the bottleneck net's "
        "--jobs N times scaled from --jobs 1 as the FC net's. Only the --jobs values measured "
        "are compared.",
    ]
    if result["incomplete_jobs"]:
        lines.append(f"Left out, their slices did not finish: --jobs {result['incomplete_jobs']}.")
    lines.append("")
    return "\n".join(lines)


def row(label: str, size: str, seconds: list[float], jobs: list) -> str:
    best = jobs[min(range(len(jobs)), key=seconds.__getitem__)]
    return f"| {label} | {size} | " + " | ".join(hours(s) for s in seconds) + f" | --jobs {best} |"


def parse_slice(values: list[str]) -> tuple[int, Path, float]:
    jobs, folder, wall = values
    return int(jobs), Path(folder), float(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slice",
        nargs=3,
        action="append",
        required=True,
        metavar=("JOBS", "OUT", "WALL_S"),
        help="a best_practices.py slice: its --jobs, --out folder and wall time",
    )
    parser.add_argument(
        "--bottleneck",
        type=Path,
        required=True,
        metavar="OUT",
        help="the --out folder of the bottleneck.py slice (--jobs 1)",
    )
    parser.add_argument(
        "--fixed",
        type=float,
        required=True,
        help="wall time of a sweep with nothing left to train (seconds)",
    )
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    slices = [
        Slice(jobs, wall, read_runs(folder)) for jobs, folder, wall in map(parse_slice, args.slice)
    ]
    try:
        result = compute(slices, args.fixed, read_runs(args.bottleneck))
    except ValueError as err:
        print(f"study_estimate.py: error: {err}", file=sys.stderr)
        return 1
    args.markdown.write_text(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
