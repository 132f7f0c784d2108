"""The backward matrices ``B_l`` of the layer methods (fa, sign, frsf, brsf): what each draws
once per weight, and the matrix (with a scalar factor) it back-propagates through in place of
``W_l``. :mod:`dfatools.fa` puts them on weight layers, :mod:`dfatools.attention` on attention's
projections; both import them from here.
"""

from __future__ import annotations

import math
import sys
from typing import cast

import torch
from torch import nn

# The buffer a method draws once per weight: B_l itself (fa), or its magnitudes (frsf, and
# brsf, which reads them at a new random offset at every backward).
DRAWN = {"fa": "feedback_weight", "frsf": "feedback_magnitude", "brsf": "feedback_magnitude"}


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (GPT-2's projections): a Linear layer whose weight is stored
    ``(in, out)``. Checked without importing ``transformers``: a model holding one has."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def fan_in(module: nn.Module, w: torch.Tensor) -> int:
    """The inputs each output of ``module`` sums over (``w`` its weight)."""
    return w.shape[0] if is_conv1d(module) else w[0].numel()


def draw(method: str, w: torch.Tensor, fan: int, gen: torch.Generator) -> torch.Tensor:
    """What ``method`` draws once for a weight ``w``: ``B_l`` (fa) or ``|R_l|`` (frsf), entries
    as PyTorch's initial weights, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, so the signals start
    at BP's scale. Drawn on the CPU: CPU and CUDA share one ``B_l``."""
    B = (torch.rand(w.shape, generator=gen) * 2 - 1) * _bound(fan)
    B = B.to(device=w.device, dtype=w.dtype)
    return B if method == "fa" else B.abs()


def backward_factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``B_l`` of a converted layer as a matrix the shape of its weight and a scalar factor
    (None for 1), so the factor can go on whichever of ``B_l`` and the result is smaller."""
    method = layer.__dict__["feedback_method"]
    w = _weight(layer).detach()
    drawn = layer.get_buffer(DRAWN[method]) if method in DRAWN else None
    return weight_factors(method, w, drawn, fan_in(layer, w))


def weight_factors(
    method: str, w: torch.Tensor, drawn: torch.Tensor | None, fan: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, scale)`` of ``method`` for the weight ``w`` (detached) with its drawn buffer."""
    if method == "fa":
        return cast(torch.Tensor, drawn), None
    if method == "frsf":
        return torch.sign(w).mul_(cast(torch.Tensor, drawn)), None
    if method == "brsf":  # new magnitudes at every backward, i.e. every batch
        return sign_times_shifted(w, cast(torch.Tensor, drawn)), None
    # The scale c minimizing |W - c sign(W)|_F is mean|W|: sign(W) alone is 1/mean|W| times
    # (~sqrt(fan_in)) too large, and plain SGD without batch norm would blow up layer by layer.
    # sum|W| as sign(W) . W: a BLAS dot, several times faster than a norm or an |W| temporary.
    B = torch.sign(w)
    total = torch.dot(B.reshape(-1).float(), w.reshape(-1).float())  # float32: fp16 overflows
    return B, total / w.numel()


def sign_times_shifted(w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``sign(w) * |R|``, ``|R|`` the drawn magnitudes ``table`` (``w``'s shape) read from a
    random offset ``k`` on, wrapping around: entry ``i`` (flat) takes ``table[(i + k) % n]``.

    A cheap variant of redrawing every magnitude at every batch: each entry's magnitude is
    ``U(0, 1/sqrt(fan_in))`` and changes from batch to batch (unless ``k`` repeats, chance
    ``1/n``), but a batch's magnitudes are a cyclic shift of one fixed draw, not a new one.
    It costs one random number (``k``, from the global CPU generator, so CUDA need not sync)
    instead of one per weight, which made brsf's step 1.2 to 1.3 times BP's."""
    B = torch.sign(w).contiguous()  # a channels-last weight gives a channels-last sign
    flat, magnitudes = B.view(-1), table.contiguous().view(-1)
    n = flat.numel()
    k = int(torch.randint(n, ()))
    flat[: n - k].mul_(magnitudes[k:])
    flat[n - k :].mul_(magnitudes[:k])
    return B


def backward_weight(layer: nn.Module) -> torch.Tensor:
    """``B_l`` of a converted layer, the shape of its weight."""
    B, scale = backward_factors(layer)
    return B if scale is None else B * scale


def _weight(layer: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, layer.weight)


def _bound(fan: int) -> float:
    """``1/sqrt(fan_in)``: the bound of PyTorch's default ``U(-b, b)`` init of a weight."""
    return 1.0 / math.sqrt(fan)
