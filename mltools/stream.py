"""How large a Transformer's residual stream grows, block by block: recorded every epoch
(:class:`StreamNorm`, ``stream_norm`` in metrics.jsonl) and measured on trained runs.

A pre-norm GPT (:class:`mltools.models.CharGPT`) ends with a LayerNorm, so its loss does not
depend on the scale of the last residual stream ``x_L`` (the sum of the embedding and every
block's output): the true gradient at ``x_L`` has no component along ``x_L``, while a DFA
signal, a fixed projection of the error, has one. This module measures what that does to
trained runs: the mean norm per token of ``x_0`` (embedding plus positions) and of ``x_l``
after each block ``l``, on the first windows of the run's eval split, from its ``model.pt``.

    python -m mltools.stream results/shakespeare        # every run of a language_model sweep
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import runlog
from .config import read
from .data import DataError
from .models import CharGPT, build, residual_blocks
from .text import load_text


class StreamNorm:
    """The residual stream after each Transformer block of ``model`` (``stream_norm``, DESIGN.md
    14): within ``with``, every forward pass adds each block output's per-token Euclidean norms;
    :meth:`values` gives their mean, one value per block (``[]`` for other networks)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.blocks = residual_blocks(model)
        self.sums: list[torch.Tensor] = []
        self.tokens = 0
        self._handles: list = []

    def _hook(self, i: int):
        def hook(module, args, output) -> None:
            h = output[0] if isinstance(output, tuple) else output
            norms = h.detach().norm(dim=-1)  # (N, T): one per token
            # On the outputs' device: no host sync per batch.
            self.sums[i] = self.sums[i].to(norms.device) + norms.sum()
            if i == 0:
                self.tokens += norms.numel()

        return hook

    def __enter__(self) -> StreamNorm:
        self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
        self.sums = [torch.zeros(()) for _ in self.blocks]  # moved to the outputs' device
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def values(self) -> list[float]:
        """The mean norm per token after each block, over every pass so far (one host sync)."""
        return [float(s) / self.tokens for s in self.sums] if self.tokens else []


@torch.no_grad()
def stream_states(net: CharGPT, tokens: torch.Tensor) -> list[torch.Tensor]:
    """``x_0`` (the first block's input) and each block's output ``x_l``, all ``(N, T, d)``,
    for ``tokens`` ``(N, T)``, read by hooks while ``net`` runs its own forward (eval mode)."""
    net.eval()
    states: list[torch.Tensor] = []
    hooks = [net.blocks[0].register_forward_pre_hook(lambda _, args: states.append(args[0]))]
    hooks += [b.register_forward_hook(lambda *io: states.append(io[2])) for b in net.blocks]
    try:
        net(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return states


def stream_norms(net: CharGPT, tokens: torch.Tensor) -> list[float]:
    """Mean norm per token of ``x_0`` and of ``x_l`` after each block, for ``tokens``
    ``(N, T)``: ``1 + len(net.blocks)`` values."""
    return [x.norm(dim=-1).mean().item() for x in stream_states(net, tokens)]


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
    from .cli import ArgumentParser, positive_int  # the command's own; training imports StreamNorm

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
