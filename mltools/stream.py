"""Measure how large the residual stream of trained Transformer runs grows, block by block.

The measuring itself, also recorded every epoch while training, is
:mod:`mltools.models.stream_norm`.

A pre-norm GPT (:class:`mltools.models.networks.CharGPT`) ends with a LayerNorm, so its loss does
not depend on the scale of the last residual stream ``x_L`` (the sum of the embedding and every
block's output): the true gradient at ``x_L`` has no component along ``x_L``, while a DFA
signal, a fixed projection of the error, has one. This command measures what that does to
trained runs: the mean norm per token of ``x_0`` (embedding plus positions) and of ``x_l``
after each block ``l``, on the first windows of the run's eval split, from its ``model.pt``.

    python -m mltools.stream results/shakespeare        # every run of a language_model sweep
"""

from __future__ import annotations

from pathlib import Path

import torch

from mltools.data.datasets import DataError
from mltools.data.text import load_text
from mltools.models.networks import CharGPT, build
from mltools.models.stream_norm import stream_norms
from mltools.runs import runlog
from mltools.runs.config import read


def run_config(run_dir: Path) -> dict:
    """The run's ``config.json``; ValueError (one line) if it cannot be read."""
    config, problems = runlog.read_config(run_dir)
    if config is None:
        raise ValueError(f"{run_dir}: no readable config.json ({'; '.join(problems)})")
    return config


def trained_net(run_dir: Path, vocab: int) -> CharGPT:
    """The run's network from ``config.json`` and ``model.pt``, without what a method added
    (the DFA matrix, a layer method's feedback buffers). ValueError if it cannot be read."""
    cfg = read(run_config(run_dir))
    net, _ = build(cfg, (cfg.context,), vocab)
    if not isinstance(net, CharGPT):
        raise ValueError(f"{run_dir}: a {cfg.arch} run, not a character GPT")
    try:
        state = torch.load(run_dir / runlog.MODEL, map_location="cpu", weights_only=True)
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in own})
    except Exception as err:  # damaged files raise many types; another model's, RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{run_dir / runlog.MODEL}: {first}") from None
    return net


def table(out: Path, windows: int) -> str:
    """A markdown table: one row per run of ``<out>/language_model/<method>/seed<k>``."""
    runs = sorted(
        p for p in Path(out).glob("language_model/*/seed*") if (p / runlog.MODEL).exists()
    )
    if not runs:
        raise ValueError(f"no run with a {runlog.MODEL} under {out}/language_model")
    if windows < 1:
        raise ValueError(f"--windows must be at least 1, got {windows}")
    config = run_config(runs[0])
    data = load_text(
        config["dataset"],
        config.get("text"),
        config["context"],
        config["eval_split"],
        None,
        windows,
        "cpu",
    )
    rows = []
    for run_dir in runs:
        norms = stream_norms(trained_net(run_dir, data.num_classes), data.x_eval)
        cells = [run_dir.parent.name, run_dir.name] + [f"{n:.4g}" for n in norms]
        rows.append("| " + " | ".join(cells) + " |")
    blocks = len(norms) - 1
    head = ["method", "seed", "x_0"] + [f"after block {i + 1}" for i in range(blocks)]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])


def main() -> None:
    from mltools.cli import ArgumentParser, positive_int

    parser = ArgumentParser(prog="python -m mltools.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a language_model.py --out folder")
    parser.add_argument(
        "--windows", type=positive_int, default=200, help="eval windows measured (default 200)"
    )
    args = parser.parse_args()
    try:
        found = table(args.out, args.windows)
    except (ValueError, DataError) as err:
        parser.error(str(err))
    print(f"Mean norm per token of the residual stream, first {args.windows} eval windows:\n")
    print(found)


if __name__ == "__main__":
    main()
