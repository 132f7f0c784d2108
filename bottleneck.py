"""Section 4 of the paper: the bottleneck effect. A sweep over bottleneck sizes, with the
standard initialization and with PAI, then the figures and table of bottleneck_from_log.py.

    python bottleneck.py                        # quick preset on the embedded digits data
    python bottleneck.py --methods dfa fa shallow   # one curve per learning-signal method
    python bottleneck.py --points all 2019 2019-nomask   # the 2019 code's network beside ours
    python bottleneck.py --preset paper --data-dir data --download   # the paper, CIFAR-10
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mltools import cli, errors
from mltools.models.architectures import BOTTLENECK_POINTS, FULL_WIDTH
from mltools.studies.experiments import BOTTLENECK, BOTTLENECK_PRESETS, METHODS

PROG = "bottleneck.py"


def parse_args():
    parser = cli.ArgumentParser(
        prog=PROG, description="The bottleneck effect: alignment vs layer size."
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=cli.positive_int,
        metavar="B",
        help="bottleneck sizes (default: the preset's)",
    )
    parser.add_argument(
        "--init",
        nargs="+",
        choices=["std", "pai"],
        default=None,
        help="initializations (default: both; PAI only for dfa, the method it pre-aligns to)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["dfa"],
        metavar="METHOD",
        help=f"learning-signal methods, a sweep each ({', '.join(METHODS)}; default dfa)",
    )
    parser.add_argument(
        "--mode",
        choices=["mask", "width"],
        default="mask",
        help="mask: a full-width layer with a fraction size/width of trainable "
        "entries (the paper); width: a genuinely narrow layer",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        choices=BOTTLENECK_POINTS,
        default=["all"],
        metavar="POINTS",
        help="feedback points, a sweep each: all (default: one before every hidden weight "
        "layer), 2019 (the 2019 code's network: none before the bottleneck layer, and its "
        "input-gradient mask), 2019-nomask (that placement without the mask); mask mode only",
    )
    parser.add_argument(
        "--width",
        type=cli.positive_int,
        default=FULL_WIDTH,
        help=f"network width (default {FULL_WIDTH})",
    )
    cli.add_sweep_arguments(parser, BOTTLENECK_PRESETS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    settings = cli.resolve_preset(args, BOTTLENECK_PRESETS, PROG)
    sizes = args.sizes or [
        b for b in BOTTLENECK_PRESETS[settings["preset"]].bottleneck_sizes if b <= args.width
    ]
    bad = [b for b in sizes if b > args.width]
    if bad:
        raise errors.UsageError(f"bottleneck sizes must be in 1..{args.width} (--width), got {bad}")
    points_list = list(dict.fromkeys(args.points))
    if args.mode != "mask" and points_list != ["all"]:
        raise errors.UsageError("--points 2019 and 2019-nomask are the 2019 code's mask-mode net")
    cells = sweep_cells(args.methods, args.init)
    out = Path(args.out)
    from mltools.models.architectures import BottleneckOptions
    from mltools.reports.bottleneck import cell_name, write_bottleneck_report
    from mltools.runs.config import RunConfig
    from mltools.sweeps import launch, sweep

    settings["recipe"] = cli.recipe_for(settings, args, "bottleneck")
    shared = sweep.shared_settings(settings, args)
    specs = []
    for points in points_list:
        for method, init in cells:
            for size in sizes:
                name = cell_name(method, args.mode, init, size, points)
                specs += [
                    sweep.RunSpec(
                        RunConfig(
                            experiment=name,
                            arch="bottleneck",
                            model=BottleneckOptions(size, args.mode, points, args.width),
                            method=method,
                            init=init,
                            seed=seed,
                            **shared,
                        ),
                        out / BOTTLENECK / name / f"seed{seed}",
                    )
                    for seed in range(settings["seeds"])
                ]
    headline = (
        f"{sweep.describe(settings)}, {sweep.recipes_line(specs)}, sizes {sizes}, "
        f"{', '.join(f'{m} {i}' for m, i in cells)}, {args.mode} mode, "
        f"points {' '.join(points_list)} -> {out / BOTTLENECK}"
    )
    return launch.execute(
        specs,
        args,
        headline,
        write_bottleneck_report,
        f"python bottleneck_from_log.py {shlex.quote(str(out))}",
    )


def sweep_cells(methods: list[str], inits: list[str] | None) -> list[tuple[str, str]]:
    """(method, init) pairs to sweep. PAI pre-aligns the forward weights with DFA's feedback
    matrices, so it pairs with ``dfa`` only: by default the other methods get ``std`` alone,
    and a method left with no initialization is an error."""
    methods = list(dict.fromkeys(methods))
    wanted = list(dict.fromkeys(inits or ["std", "pai"]))
    cells = [(m, i) for m in methods for i in wanted if i == "std" or m == "dfa"]
    orphans = [m for m in methods if not any(cm == m for cm, _ in cells)]
    if orphans:
        raise errors.UsageError(
            f"--init pai pairs with dfa only (PAI pre-aligns to DFA's feedback); "
            f"add --init std to run {' '.join(orphans)}"
        )
    return cells


if __name__ == "__main__":
    cli.run_main(main, PROG)
