"""A Linear layer whose trainable entries are a fixed random subset (DESIGN.md 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Linear):
    """``nn.Linear`` where each weight and bias entry is trainable with probability
    ``size / out_features``; the others keep their initial value.

    The masks come from a ``torch.Generator`` seeded by ``seed`` and are buffers
    (``weight_mask`` ``(out_features, in_features)``, ``bias_mask`` ``(out_features,)``), so they
    travel with the ``state_dict``. Masking is done on the gradient path inside ``forward``, so BP
    and DFA gradients are masked alike and any optimizer sees a zero gradient on frozen entries
    (weight decay would still move them; the paper uses none).

    Shape: ``(N, in_features)`` in, ``(N, out_features)`` out.
    """

    weight_mask: torch.Tensor
    bias_mask: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        size: int,
        bias: bool = True,
        seed: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        if not isinstance(size, int) or not 1 <= size <= out_features:
            raise ValueError(
                f"bottleneck size must be an int in 1..{out_features} (out_features), got {size!r}"
            )
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.size = size
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        keep = size / out_features
        weight_mask = torch.rand(out_features, in_features, generator=gen) < keep
        bias_mask = torch.rand(out_features, generator=gen) < keep
        self.register_buffer("weight_mask", weight_mask.to(self.weight.device))
        self.register_buffer("bias_mask", bias_mask.to(self.weight.device) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Values are the full weight; gradient flows only to the kept entries.
        weight = torch.where(self.weight_mask, self.weight, self.weight.detach())
        bias = None
        if self.bias is not None and self.bias_mask is not None:
            bias = torch.where(self.bias_mask, self.bias, self.bias.detach())
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, size={self.size}, seed={self.seed}"
