"""Section 4 of the paper: the bottleneck effect. A sweep over bottleneck sizes, with the
standard initialization and with PAI, then the figures and table of bottleneck_from_log.py.

    python bottleneck.py                        # quick preset on the embedded digits data
    python bottleneck.py --preset paper --data-dir data --download   # the paper, CIFAR-10
"""
from __future__ import annotations

from pathlib import Path

from mltools import cli
from mltools.experiments import BOTTLENECK_PRESETS

PROG = "bottleneck.py"


def parse_args():
    parser = cli.ArgumentParser(prog=PROG, description="The bottleneck effect: alignment vs layer size.")
    parser.add_argument("--sizes", nargs="+", type=cli.positive_int, metavar="B",
                        help="bottleneck sizes (default: the preset's)")
    parser.add_argument("--init", nargs="+", choices=["std", "pai"], default=["std", "pai"],
                        help="initializations (default: both)")
    parser.add_argument("--mode", choices=["mask", "width"], default="mask",
                        help="mask: a full-width layer with a fraction size/width of trainable "
                             "entries (the paper); width: a genuinely narrow layer")
    parser.add_argument("--width", type=cli.positive_int, default=800, help="network width (default 800)")
    cli.add_sweep_arguments(parser)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    settings = cli.resolve_preset(args, BOTTLENECK_PRESETS, PROG)
    sizes = args.sizes or [b for b in BOTTLENECK_PRESETS[settings["preset"]].bottleneck_sizes
                           if b <= args.width]
    bad = [b for b in sizes if b > args.width]
    if bad:
        raise cli.UsageError(f"bottleneck sizes must be in 1..{args.width} (--width), got {bad}")
    out = Path(args.out)
    from mltools import sweep
    from mltools.bottleneck_report import write_bottleneck_report
    from mltools.train import RunConfig
    shared = sweep.shared_settings(settings, args)
    specs = [sweep.RunSpec(RunConfig(experiment=f"{args.mode}-{init}-b{size}", arch="bottleneck",
                                     bottleneck_size=size, bottleneck_mode=args.mode,
                                     width=args.width, init=init, seed=seed, **shared),
                           out / "bottleneck" / f"{args.mode}-{init}-b{size}" / f"seed{seed}")
             for init in args.init for size in sizes for seed in range(settings["seeds"])]
    headline = (f"{sweep.describe(settings)}, sizes {sizes}, init {' '.join(args.init)}, "
                f"{args.mode} mode -> {out / 'bottleneck'}")
    return sweep.execute(specs, args, headline, write_bottleneck_report)

if __name__ == "__main__":
    cli.run_main(main, PROG)
