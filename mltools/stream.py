"""How large a trained character LM's residual stream grows, block by block.

A pre-norm GPT (:class:`mltools.models.CharGPT`) ends with a LayerNorm, so its loss does not
depend on the scale of the residual stream ``x_l`` (the sum of the embedding and every block's
output so far): the true gradient at ``x_l`` has no component along ``x_l``, while a DFA signal,
a fixed projection of the error, has one. This module measures the result on trained runs:
the mean norm per token of ``x_0`` (embedding plus positions) and of ``x_l`` after each block,
on the first windows of the run's eval split, from the run's ``model.pt``.

    python -m mltools.stream results/shakespeare        # every run of a language_model sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import runlog
from .data import DataError
from .models import CharGPT
from .text import load_text


@torch.no_grad()
def stream_norms(net: CharGPT, tokens: torch.Tensor) -> list[float]:
    """Mean norm per token of ``x_0`` then of ``x_l`` after each block, for ``tokens``
    ``(N, T)``: ``1 + len(net.blocks)`` values."""
    net.eval()
    length = tokens.shape[1]
    x = net.embed(tokens) + net.pos[:length]
    norms = [x.norm(dim=-1).mean().item()]
    for block in net.blocks:
        x = block(x, net.mask[:length, :length])
        norms.append(x.norm(dim=-1).mean().item())
    return norms


def trained_net(run_dir: Path, vocab: int) -> CharGPT:
    """The run's network from ``config.json`` and ``model.pt`` (the feedback matrix dropped)."""
    config, problems = runlog.read_config(run_dir)
    if config is None:
        raise ValueError(f"{run_dir}: no readable config.json ({'; '.join(problems)})")
    net = CharGPT(vocab, config["context"], config["lm_width"], config["lm_depth"])
    state = torch.load(run_dir / runlog.MODEL, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("feedback.")})
    return net


def table(out: Path, windows: int) -> str:
    """A markdown table: one row per run of ``<out>/language_model/<method>/seed<k>``."""
    runs = sorted(
        p for p in Path(out).glob("language_model/*/seed*") if (p / runlog.MODEL).exists()
    )
    if not runs:
        raise ValueError(f"no run with a {runlog.MODEL} under {out}/language_model")
    config, _ = runlog.read_config(runs[0])
    assert config is not None
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a language_model.py --out folder")
    parser.add_argument(
        "--windows", type=int, default=200, help="eval windows measured (default 200)"
    )
    args = parser.parse_args()
    try:
        found = table(args.out, args.windows)
    except (ValueError, DataError) as err:
        parser.exit(2, f"mltools.stream: {err}\n")
    print(f"Mean norm per token of the residual stream, first {args.windows} eval windows:\n")
    print(found)


if __name__ == "__main__":
    main()
