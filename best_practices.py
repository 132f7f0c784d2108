"""Sections 3 and 4 of the paper: DFA best practices, as one sweep of runs and one report.

python best_practices.py                       # quick preset on the embedded digits data
python best_practices.py --preset paper --data-dir data --download   # the paper, CIFAR-10
python best_practices.py --list                # experiments and their settings
python best_practices.py --group methods       # FA, sign, DRTP, shallow next to DFA and BP
python best_practices.py --report-only         # report and figures from saved runs
python best_practices.py --preset fashion-fair  # every method at its own lr and epochs, vs BP
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

from mltools import cli, errors
from mltools.studies.experiments import (
    BEST_PRACTICES,
    BEST_PRACTICES_PRESETS,
    DEFAULT_EXPERIMENTS,
    EXPERIMENTS,
    GROUPS,
)

PROG = "best_practices.py"


def parse_args():
    parser = cli.ArgumentParser(
        prog=PROG, description="The paper's best-practices tables (DFA on FC and CNN)."
    )
    parser.add_argument(
        "--experiments",
        nargs="+",
        metavar="NAME",
        choices=list(EXPERIMENTS),
        help="experiments to run (default: the paper's, marked * in --list); see --list",
    )
    parser.add_argument(
        "--group",
        nargs="+",
        choices=list(GROUPS),
        default=[],
        metavar="GROUP",
        help=f"also run every experiment of these figure groups "
        f"({', '.join(GROUPS)}); 'methods' runs fc-/conv- fa, sign, drtp "
        "and shallow next to tanh DFA and BP",
    )
    parser.add_argument("--list", action="store_true", help="list experiments and exit")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report and figures from saved runs, no training",
    )
    cli.add_sweep_arguments(parser, BEST_PRACTICES_PRESETS)
    cli.add_transformer_arguments(parser)
    cli.add_choices_argument(parser)
    return parser.parse_args()


def list_experiments() -> None:
    from mltools.models.architectures import ARCHS
    from mltools.runs.config import RunConfig

    base = RunConfig()
    print(f"{'name':18} {'method':7} {'arch':5} setting   (* = run by default)")
    for name, (text, changes) in EXPERIMENTS.items():
        cfg = {**base.__dict__, **changes}
        mark = "*" if name in DEFAULT_EXPERIMENTS else " "
        print(f"{name:17}{mark} {cfg['method']:7} {cfg['arch']:5} {text}  {changes}")
    for group, names in GROUPS.items():
        print(f"group {group}: {' '.join(names)}")
    for preset, p in BEST_PRACTICES_PRESETS.items():
        samples = (
            f"first {p.train_samples} training samples"
            if p.train_samples
            else "all training samples"
        )
        seeds = f"{p.seeds} seeds" + (f" ({p.cnn_seeds} for the CNN)" if p.cnn_seeds else "")
        schedule = (
            f"lr and epochs per experiment ({p.choices_name}), effects vs {p.reference}"
            if p.choices
            else f"{p.epochs} epochs, lr {p.lr}"
        )
        recipes = ", ".join(f"{arch} {p.recipe(arch)}" for arch in ARCHS)
        print(
            f"preset {preset}: {p.dataset}, {seeds}, {schedule}, batch {p.batch_size}, "
            f"{p.eval_split} mode, {samples}, "
            f"CNN inputs upsampled to at least {p.cnn_min_side}x{p.cnn_min_side}, "
            f"recipes: {recipes}"
        )


def chosen_experiments(args, default: list[str]) -> list[str]:
    """--experiments then --group's, each once, in that order; ``default`` when neither."""
    if not args.experiments and not args.group:
        return default
    names = [*(args.experiments or []), *(n for g in args.group for n in GROUPS[g])]
    return list(dict.fromkeys(names))


def main() -> int:
    args = parse_args()
    if args.list:
        list_experiments()
        return 0
    from mltools.reports.best_practices import write_best_practices_report

    out = Path(args.out)
    # A per-method preset reports against BP: --report-only takes the reference from --preset.
    reference = BEST_PRACTICES_PRESETS[args.preset].reference if args.preset else "dfa"
    write_report = functools.partial(write_best_practices_report, reference=reference)
    if args.report_only:
        if not (out / BEST_PRACTICES).is_dir():
            raise errors.UsageError(f"no best-practices runs under {out}; train some first")
        errors.write_or_stop(write_report, errors.writable_dir(out))
        return 0
    settings = cli.resolve_preset(args, BEST_PRACTICES_PRESETS, PROG)
    choices = cli.sweep_choices(args, BEST_PRACTICES_PRESETS[settings["preset"]], settings)
    from mltools.runs.config import RunConfig
    from mltools.sweeps import launch, sweep

    names = chosen_experiments(args, list(choices) or DEFAULT_EXPERIMENTS)
    blocks = cli.transformer_options(args)  # --norm, --error-at: the transformer-* experiments'
    if blocks and not any(EXPERIMENTS[n][1].get("arch") == "transformer" for n in names):
        raise errors.UsageError(
            "--norm and --error-at set the transformer-* experiments; none is run"
        )
    specs = []
    for name in names:
        own = cli.experiment_settings(settings, choices, name, args)
        shared = sweep.shared_settings(own, args)
        changes = dict(EXPERIMENTS[name][1])
        model = dict(changes.get("model", {}))
        if changes.get("arch") == "transformer":
            model.update(blocks)
        if changes.get("arch") == "cnn":
            model["min_side"] = own["cnn_min_side"]  # the preset's, for its dataset
        changes["model"] = model
        specs += [
            sweep.RunSpec(
                RunConfig(experiment=name, seed=seed, **shared, **changes),
                out / BEST_PRACTICES / name / f"seed{seed}",
            )
            for seed in range(own["seeds"])
        ]
    headline = f"{sweep.describe(settings)}, {sweep.recipes_line(specs)} -> {out / BEST_PRACTICES}"
    preset = f" --preset {args.preset}" if reference != "dfa" else ""
    return launch.execute(
        specs,
        args,
        headline,
        write_report,
        f"python {PROG} --report-only{preset} --out {shlex.quote(str(out))}",
    )


if __name__ == "__main__":
    cli.run_main(main, PROG)
