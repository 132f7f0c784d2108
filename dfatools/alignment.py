"""Alignment between a method's learning signals and true gradients (DESIGN.md 3 and 7)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from .fa import exact_layers, layer_method
from .feedback import DFA
from .inspect import eval_mode, find_dfa, trace_points
from .placement import forward_site, model_output

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Alignment:
    """Alignment at one feedback point.

    ``cos_mean``/``cos_std``: mean and std over the batch of the per-sample cosine between the
    true gradient ``N * dL/dh_l`` and the DFA signal ``s_l``; ``angle_deg``: mean of the per-sample
    angles in degrees; ``weight_cos``: cosine between the DFA and BP gradients of the weight(s)
    of the layer producing block ``l`` (``nan`` if there is none); ``undefined_frac``: fraction
    of the samples whose cosine is undefined (a zero norm, e.g. an output error of exactly 0
    once the softmax saturates) and therefore counted as 0 in ``cos_mean``.
    """

    point: int
    name: str
    cos_mean: float
    cos_std: float
    angle_deg: float
    weight_cos: float
    undefined_frac: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def per_sample_cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each sample's flattened ``a`` and ``b``, ``(N, *)`` -> ``(N,)``, and the mask
    ``(N,)`` of samples where it is undefined (a norm is 0); the cosine is 0 there."""
    a, b = a.flatten(1), b.flatten(1)
    denom = a.norm(dim=1) * b.norm(dim=1)
    dot = (a * b).sum(dim=1)
    defined = denom > 0
    cos = torch.where(
        defined, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(dot)
    )
    return cos, ~defined


def _flat_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if not a:
        return math.nan
    va, vb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    denom = va.norm() * vb.norm()
    return float((va @ vb) / denom) if denom > 0 else 0.0


def cross_entropy(out: torch.Tensor, y: torch.Tensor, class_dim: int = -1) -> torch.Tensor:
    """Mean cross-entropy of logits ``(N, *, K)`` (or, ``class_dim=1``, ``(N, K, *)``) against
    class indices ``(N, *)``: every position counts as a sample (``F.cross_entropy`` itself for
    an ``(N, K)`` output, and for a channels-first one)."""
    if class_dim == 1:
        return F.cross_entropy(out, y)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def node_loss(node: DFA) -> LossFn:
    """The cross-entropy over ``node``'s class dimension: the default loss of
    :func:`measure_alignment` and :func:`~dfatools.prealign`."""
    return lambda out, y: cross_entropy(out, y, node.class_dim)


def positions(out: torch.Tensor, class_dim: int = -1) -> int:
    """``P``, the number of positions of an output: every element but the class dimension's
    (``N`` for ``(N, K)``)."""
    return out.numel() // out.shape[class_dim]


def measure_alignment(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None
) -> list[Alignment]:
    """Alignment at every feedback point of ``model`` on the batch ``(x, y)``, in the order of
    the DFA node's points (forward order for :func:`~dfatools.to_dfa` models).

    ``x``: the model's input; ``y``: class indices ``(N, *)``, one per position of the output
    ``(N, *, K)`` (or ``(N, K, *)``). With position dimensions every position is a sample of
    the cosine: ``h_l`` and both signals are compared per position, ``(P, -1)``. ``loss_fn``
    takes the output tensor the DFA node sits on (its ``output=``) and ``y``; by default the
    mean cross-entropy over the node's class dimension.

    The signal compared with the true gradient is the one the model's method delivers at
    ``h_l``: the DFA signal ``s_l`` (dfa, and bp models, whose node is only switched off), the
    target projection (drtp; ``y`` are class indices), zeros (shallow: every cosine is undefined
    and counted as 0), or ``N * dL/dh_l`` as the fa/sign layers back-propagate it (fa, sign;
    a second forward pass). ``weight_cos`` compares the weight gradients that signal gives with
    the true ones, over the weight layers that ran between the previous point and this one.

    Runs in eval mode on the same weights, with no second copy of the model. The model is left
    as it was: no ``.grad`` written, train/eval flags restored, the RNG streams not advanced
    (brsf draws its random magnitudes from a forked stream).
    """
    node = find_dfa(model)
    loss_fn = loss_fn or node_loss(node)
    through_layers = layer_method(model) is not None
    with eval_mode(model), node.backprop(), torch.enable_grad():
        with exact_layers(model), trace_points(model, node) as traces:
            with forward_site(model, node) as site:
                out = model_output(model(x), node)
            z = site[-1]  # y, or the error_at site's output: where the error is taken
            if len(traces) != len(node.points):
                raise RuntimeError(f"{len(traces)} of {len(node.points)} feedback points ran")
            loss = loss_fn(out, y)
            hs = [t.h for t in traces]
            shapes = [h.shape for h in hs]
            if not through_layers:  # fa/sign models use no feedback matrix
                node.prepare(shapes, z)
            weights = [_weights(t.below) for t in traces]
            flat_w = [w for ws in weights for w in ws]
            grads = torch.autograd.grad(loss, [z, *hs, *flat_w], retain_graph=True)
            grad_y, grad_h, grad_w = grads[0], grads[1 : 1 + len(hs)], list(grads[1 + len(hs) :])
            n = positions(z, node.class_dim)
            if not through_layers:
                signals = node.learning_signals(grad_y, y, shapes)
                method_w = [
                    list(torch.autograd.grad(h, ws, grad_outputs=s, retain_graph=True))
                    if ws
                    else []
                    for h, s, ws in zip(hs, signals, weights)
                ]
        if through_layers:  # outside exact_layers: the model's own backward
            with _forked_rng(out.device):
                signals, method_w = _layer_signals(model, node, x, y, loss_fn, weights)
        results = []
        for i, (g, s, ws, m_w) in enumerate(zip(grad_h, signals, weights, method_w)):
            cos, undefined = per_sample_cosine(node.rows(g * n, z.dim()), node.rows(s, z.dim()))
            bp_w = [grad_w.pop(0) for _ in ws]
            results.append(
                Alignment(
                    point=i,
                    name=_point_name(node, i, traces[i].below),
                    cos_mean=float(cos.mean()),
                    cos_std=float(cos.std(correction=0)),
                    angle_deg=float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).mean()),
                    weight_cos=_flat_cosine(m_w, bp_w),
                    undefined_frac=float(undefined.float().mean()),
                )
            )
    return results


def _layer_signals(
    model: nn.Module,
    node: DFA,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    weights: list[list[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """``P * dL/dh_l`` ``(N, *)`` per point and ``dL/dW`` per weight of ``weights``, as the
    model's fa/sign layers back-propagate them (feedback points crossed, as in training)."""
    with trace_points(model, node) as traces, forward_site(model, node) as site:
        out = model_output(model(x), node)
        hs = [t.h for t in traces]
        flat_w = [w for ws in weights for w in ws]
        grads = list(torch.autograd.grad(loss_fn(out, y), [*hs, *flat_w]))
    n = positions(site[-1], node.class_dim)
    signals = [g * n for g in grads[: len(hs)]]
    rest = grads[len(hs) :]
    return signals, [[rest.pop(0) for _ in ws] for ws in weights]


def _weights(layers: list[nn.Module]) -> list[torch.Tensor]:
    """The trainable weights of ``layers`` (weight layers: Linear, Conv2d)."""
    weights = [cast(torch.Tensor, m.weight) for m in layers]
    return [w for w in weights if w.requires_grad]


def _point_name(node: DFA, i: int, below: list[nn.Module]) -> str:
    """The qualified name of a placed point (``"layer1.0"``), ``"h2 (Linear)"`` otherwise."""
    point = node.points[i]
    if point.name:
        return point.name
    return f"h{i + 1} ({', '.join(type(m).__name__ for m in below) or 'input'})"


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Random draws inside the block (brsf's magnitudes) leave the training streams as they were."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield
