"""Pre-alignment initialization, PAI (DESIGN.md section 5)."""

from __future__ import annotations

import logging
from typing import cast

import torch
from torch import nn

from .alignment import LossFn, node_loss, positions
from .inspect import eval_mode, find_dfa, trace_points
from .placement import forward_site, model_output

log = logging.getLogger("dfatools")


@torch.no_grad()
def _solve(delta: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Least-squares ``W`` ``(out, d)`` with ``delta @ W = signal``, scaled to unit Frobenius norm.

    ``delta``: ``(N, out)`` true gradient at the layer's output; ``signal``: ``(N, d)``.

    Singular values below the precision ``delta`` was computed in are treated as 0: for the
    output layer, the rows of ``softmax - onehot`` sum to 0, so one singular value is only
    rounding noise, and inverting it added a component along the all-ones output direction of
    arbitrary size (31% of the weight's norm between float32 and float64 on a digits batch, 6%
    after a 1e-7 change of the input, so CPU and CUDA disagreed). The cutoff is NumPy's rank
    tolerance, ``max(N, out) * eps``.
    """
    rtol = max(delta.shape) * torch.finfo(delta.dtype).eps
    w = torch.linalg.pinv(delta.double(), rtol=rtol) @ signal.double()
    return (w / w.norm()).to(signal.dtype)


def prealign(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None
) -> nn.Module:
    """Pre-align ``model`` in place on the batch ``(x, y)`` and return it.

    From the top feedback point down, the weight of the Linear layer reading ``h_l`` is set so
    that the true gradient at ``h_l`` equals the DFA signal ``s_l`` on this batch (least squares),
    then rescaled to unit Frobenius norm. With position dimensions (an output ``(N, *, K)``),
    every position is a row of the least-squares problem. Points not read directly by a Linear
    layer (a Conv2d, a residual block, a pooling in between) are left as they are, with a
    logged note. Biases are unchanged; eval mode is used so dropout and batch norm statistics
    stay put.
    """
    node = find_dfa(model)
    loss_fn = loss_fn or node_loss(node)
    for i in reversed(range(len(node.points))):
        # A fresh pass per point: the layers above were just changed.
        with (
            eval_mode(model),
            node.backprop(),
            torch.enable_grad(),
            trace_points(model, node) as traces,
            forward_site(model, node) as site,
        ):
            out = model_output(model(x), node)
            z = site[-1]  # y, or the error_at site's output
            trace = traces[i]
            layer = trace.above
            if not isinstance(layer, nn.Linear) or trace.above_in is not trace.h:
                log.warning(
                    "PAI leaves point %d as it is: the next weight layer is %s, not a "
                    "Linear layer reading the point directly",
                    i,
                    type(layer).__name__,
                )
                continue
            loss = loss_fn(out, y)
            grad_z, grad_a = torch.autograd.grad(loss, [z, cast(torch.Tensor, trace.above_out)])
            n = positions(z, node.class_dim)
            shapes = [t.h.shape for t in traces]
            node.prepare(shapes, z)
            signal = node.signals(node.error_from_grad(grad_z), shapes)[i]
            delta = grad_a.reshape(n, -1) * n  # (P, out)
            layer.weight.data.copy_(_solve(delta, node.rows(signal, z.dim())))
    return model
