"""Train a published run again from its ``config.json`` alone and compare the two
``metrics.jsonl``, number for number: what "anyone can re-run one run" means here.

    python -m mltools.rerun docs/results/digits/lr-grid/lr0.01/best_practices/fc-tanh/seed0

The run is trained under ``--out`` (the run's own folder name there), through the same sweep
code as the scripts, so a finished one is not trained twice. Wall times are left out of the
comparison; every other number must agree within ``--tolerance`` (relative), else the exit
code is 1. The run trains with the torch thread count it recorded: sums split over another
number of threads, or run on another CPU, round differently.
"""

from __future__ import annotations

import math
from pathlib import Path

from mltools import cli, errors
from mltools.runs import runlog
from mltools.runs.config import read


def added_since(published: list[dict], again: list[dict]) -> list[str]:
    """The metrics the run records now that the published run did not (recorded since it
    was made, such as ``stream_norm``): left out of :func:`differences`."""
    before = {key for record in published for key in record}
    return sorted({key for record in again for key in record} - before)


def differences(published: list[dict], again: list[dict]) -> list[tuple[str, float]]:
    """Each metric that differs: ``epoch <e> <key path>`` and its relative difference (inf for
    a missing or non-numeric mismatch); wall times (``time_s``) and the metrics of
    :func:`added_since` are not compared."""
    found: list[tuple[str, float]] = []
    skipped = {"time_s", *added_since(published, again)}

    def walk(a: object, b: object, where: str, top: bool = False) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted((set(a) | set(b)) - (skipped if top else {"time_s"})):
                walk(a.get(key), b.get(key), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if a != b and not (math.isnan(a) and math.isnan(b)):
                found.append((where, abs(a - b) / max(abs(a), abs(b))))
        elif a != b:
            found.append((where, math.inf))

    if len(published) != len(again):
        found.append(("epochs recorded", math.inf))
    for a, b in zip(published, again):
        walk(a, b, f"epoch {a.get('epoch')}", top=True)
    return found


def main() -> int:
    parser = cli.ArgumentParser(
        prog="python -m mltools.rerun", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", type=Path, help="a run folder with config.json and metrics.jsonl")
    parser.add_argument("--out", default="results/rerun", help="where to train it again")
    parser.add_argument("--data-dir", help="where the datasets lie (default: the run's)")
    parser.add_argument(
        "--device", default="cpu", help="cpu (the published runs'), cuda, cuda:N or auto"
    )
    parser.add_argument(
        "--threads", type=cli.positive_int, help="torch threads (default: the run's recorded)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="relative difference allowed (default 0)"
    )
    args = parser.parse_args()
    config, problems = runlog.read_config(args.run)
    published, _ = runlog.read_json_lines(args.run / runlog.METRICS)
    if config is None or not published:
        why = "; ".join(problems) or f"no {runlog.METRICS}"
        raise errors.UsageError(f"{args.run} is not a run folder ({why})")
    try:
        cfg = read(config)
    except ValueError as err:
        raise errors.UsageError(str(err)) from None
    if args.data_dir:
        cfg.data_dir = args.data_dir
    import torch

    from mltools.sweeps import sweep

    # Floating-point sums depend on how many threads split them: the run's own count.
    torch.set_num_threads(args.threads or int(config.get("threads") or torch.get_num_threads()))

    spec = sweep.RunSpec(cfg, errors.writable_dir(args.out) / args.run.name)
    target = spec.run_dir
    sweep.check_inputs(args.device, [spec])
    outcomes = sweep.run_sweep([spec], args.device, quiet=True)
    if outcomes.get("failed"):
        raise errors.UsageError(f"the run failed again; see {target / runlog.LOG}")
    again, _ = runlog.read_json_lines(target / runlog.METRICS)
    found = differences(published, again)
    if added := added_since(published, again):
        print(f"recorded now, not by the published run, so not compared: {', '.join(added)}")
    worst = max(found, key=lambda f: f[1], default=None)
    if worst is None:
        print(f"{target}: every recorded number equals the published one ({len(again)} epochs)")
        return 0
    print(
        f"{target}: {len(found)} numbers differ, the most {worst[1]:.3g} (relative) at {worst[0]}"
    )
    return 0 if worst[1] <= args.tolerance else 1


if __name__ == "__main__":
    cli.run_main(main, "python -m mltools.rerun")
