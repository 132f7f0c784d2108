"""``nn.MultiheadAttention`` under the layer methods (fa, sign, brsf, frsf): its projections
back-propagate through their own ``B`` (DESIGN.md 7).

``nn.MultiheadAttention`` computes its input and output projections with functional calls on
its own parameters, so the hooks that convert ``nn.Linear`` modules (:mod:`dfatools.fa`) never
see them and the attention's backward stays exact. A converted attention module instead runs
:class:`AttentionForward`: the same computation as ``F.multi_head_attention_forward`` (masks,
causal hint, dropout, averaged or per-head weights, batch-first or not), written out with
``F.scaled_dot_product_attention``, where every projection sends its input gradient through the
method's backward matrix:

* the input projection: ``in_proj_weight`` ``(3E, E)`` (or ``q/k/v_proj_weight`` when keys and
  values have their own sizes), with buffers ``in_proj_feedback_weight`` (fa) or
  ``in_proj_feedback_magnitude`` (frsf, brsf) of its shape;
* the output projection ``out_proj``, an ``nn.Linear``, with its own buffers as any converted
  Linear layer.

Not supported (refused at conversion): ``add_bias_kv`` and ``add_zero_attn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .backward_weights import DRAWN, backward_factors, draw, weight_factors

PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class _ThroughMatrix(torch.autograd.Function):
    """Identity on a projection's output ``(*, out)``; its backward also returns the input
    gradient ``grad @ B`` with ``B = matrix()`` ``(out, in)``, taken at backward time."""

    @staticmethod
    def forward(ctx, matrix: Callable[[], torch.Tensor], out, x):
        ctx.matrix = matrix
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        return None, grad_out, grad_out @ ctx.matrix().to(grad_out.dtype)


def _projection_matrix(mha: nn.MultiheadAttention, name: str) -> torch.Tensor:
    """``B`` of the projection weight ``name`` of a converted ``mha``, scale applied."""
    method = mha.__dict__["feedback_method"]
    w = getattr(mha, name).detach()
    drawn = mha.get_buffer(_buffer_name(name, method)) if method in DRAWN else None
    B, scale = weight_factors(method, w, drawn, w.shape[1])
    return B if scale is None else B * scale


def _buffer_name(weight: str, method: str) -> str:
    return f"{weight.removesuffix('_weight')}_{DRAWN[method]}"


def convert_attention(mha: nn.MultiheadAttention, method: str, gen: torch.Generator) -> None:
    """Give ``mha`` its buffers (drawn from ``gen``) and :class:`AttentionForward`."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(
            "the layer methods support nn.MultiheadAttention without add_bias_kv and add_zero_attn"
        )
    if method in DRAWN:
        for name in PROJECTIONS:
            w = getattr(mha, name)
            if w is not None:
                mha.register_buffer(_buffer_name(name, method), draw(method, w, w.shape[1], gen))
    mha.forward = AttentionForward(mha)  # type: ignore[method-assign]


def _project(mha: nn.MultiheadAttention, x, weight: str, bias, rows: slice | None = None):
    """``x @ W[rows]^T + b``, the input gradient through ``B[rows]`` when the method is on."""
    w = getattr(mha, weight)
    w = w if rows is None else w[rows]
    on = mha.__dict__["feedback_enabled"] and torch.is_grad_enabled() and x.requires_grad
    if not on:
        return F.linear(x, w, bias)
    out = F.linear(x.detach(), w, bias)

    def matrix() -> torch.Tensor:
        B = _projection_matrix(mha, weight)
        return B if rows is None else B[rows]

    return _ThroughMatrix.apply(matrix, out, x)


def _out_projection(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    layer = mha.out_proj
    on = mha.__dict__["feedback_enabled"] and torch.is_grad_enabled() and x.requires_grad
    if not on:
        return F.linear(x, layer.weight, layer.bias)
    out = F.linear(x.detach(), layer.weight, layer.bias)

    def matrix() -> torch.Tensor:
        B, scale = backward_factors(layer)
        return B if scale is None else B * scale

    return _ThroughMatrix.apply(matrix, out, x)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as an additive float mask; a float one as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def _each(change: Callable[[torch.Tensor], torch.Tensor], query, key, value) -> tuple:
    """``change`` applied to query, key and value, once to a tensor passed as more than one of
    them: self-attention stays recognisable (``query is key``) for its packed projection."""
    if query is key and key is value:
        query = key = value = change(query)
        return query, key, value
    if key is value:
        pair = change(key)
        return change(query), pair, pair
    return change(query), change(key), change(value)


class AttentionForward:
    """The forward of a converted ``nn.MultiheadAttention``, its arguments and results as
    ``nn.MultiheadAttention.forward``'s. A small object rather than a closure, so that
    ``copy.deepcopy`` of the model gives one bound to the copy."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        self.mha = mha

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mha = self.mha
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")  # as torch
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = _each(lambda t: t.unsqueeze(0), query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not mha.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = _each(lambda t: t.transpose(0, 1), query, key, value)
        q, k, v = self._projections(query, key, value)
        n, length, embed = q.shape
        heads = mha.num_heads
        q, k, v = (t.unflatten(-1, (heads, embed // heads)).transpose(1, 2) for t in (q, k, v))
        mask = self._mask(key_padding_mask, attn_mask, n, length, k.shape[2], q.dtype)
        causal = is_causal and key_padding_mask is None and not need_weights
        dropout = mha.dropout if mha.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout > 0:  # the weights returned are those applied, as torch's
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, None if causal else mask, dropout, is_causal=causal
            )
        out = _out_projection(mha, out.transpose(1, 2).flatten(2))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _projections(self, query, key, value):
        mha = self.mha
        embed = mha.embed_dim
        bias = mha.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        if not mha._qkv_same_embed_dim:
            return (
                _project(mha, query, "q_proj_weight", b_q),
                _project(mha, key, "k_proj_weight", b_k),
                _project(mha, value, "v_proj_weight", b_v),
            )
        if query is key and key is value:  # self-attention: one packed product, as torch does
            return _project(mha, query, "in_proj_weight", bias).chunk(3, dim=-1)
        rows = [slice(i * embed, (i + 1) * embed) for i in range(3)]
        return tuple(
            _project(mha, x, "in_proj_weight", b, r)
            for x, b, r in zip((query, key, value), (b_q, b_k, b_v), rows)
        )

    def _mask(self, key_padding_mask, attn_mask, n, length, source, dtype):
        """The additive mask ``(N, H, L, S)`` (or one that broadcasts to it), or None."""
        heads = self.mha.num_heads
        mask = _additive(attn_mask, dtype)
        if mask is not None and mask.dim() == 3:  # (N * H, L, S)
            mask = mask.view(n, heads, length, source)
        padding = _additive(key_padding_mask, dtype)
        if padding is not None:  # (N, S): the keys not to attend
            padding = padding.view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask
