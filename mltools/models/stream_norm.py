"""The residual stream of a Transformer, measured: its mean norm per token after each block,
recorded every epoch while training (:class:`StreamNorm`, ``stream_norm`` in metrics.jsonl) and
read from a trained character GPT (:func:`stream_norms`; the command ``python -m mltools.stream``
tabulates it over a sweep's runs). Why it matters: docs/language-model.md.
"""

from __future__ import annotations

import torch

from mltools.models.networks import CharGPT, residual_blocks


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
