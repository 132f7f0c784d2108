"""Feedback alignment and sign symmetry: weight layers that back-propagate through another
matrix.

In these methods a hidden layer's learning signal is still back-propagated layer by layer, but
each weight layer sends the gradient to its input through a backward matrix ``B_l`` of its
weight's shape instead of ``W_l``: ``nn.Linear``, ``nn.Conv2d`` (and
:class:`~dfatools.Bottleneck`), the projections of ``nn.MultiheadAttention``
(:mod:`dfatools.attention`) and, when a model holds them, the ``Conv1D`` layers of Hugging
Face ``transformers`` (GPT-2's, a Linear layer with a transposed weight):

* ``fa`` (Lillicrap et al. 2016): ``B_l`` fixed and random, a buffer drawn from a seeded
  ``torch.Generator`` (never the global RNG) and saved in the ``state_dict``;
* ``sign`` (uSF of Liao, Leibo, Poggio 2016; sign symmetry of Xiao et al. 2018):
  ``B_l = sign(W_l) * mean(|W_l|)``, from the current weight at every step;
* ``frsf`` and ``brsf`` (Moskovitz et al. 2018): ``B_l = |R_l| * sign(W_l)`` with random
  magnitudes, fixed (``frsf``, a buffer) or redrawn every batch (``brsf``).

How, without costing more than BP: a forward pre-hook hands the layer ``x.detach()``, so the
layer's own backward computes only its weight and bias gradients (never ``W^T delta``); a
forward hook wraps the output in an identity whose backward also returns the input gradient
through ``B_l``. A step does the same products as BP, with ``B_l`` in place of ``W_l``.

The hooks live on the layers, so the converters work on any ``nn.Module``. Weight and bias
gradients, and every other layer (batch norm, pooling, activations), are exact.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.grad import conv2d_input

from .attention import convert_attention
from .backward_weights import (
    DRAWN,
    _weight,
    backward_factors,
    draw,
    fan_in,
    is_conv1d,
)
from .feedback import DFA, WEIGHT_LAYERS

LAYER_METHODS = ("fa", "sign", "brsf", "frsf")


class _BackwardThrough(torch.autograd.Function):
    """Identity on a layer's output ``(N, *)``; its backward also returns the gradient of the
    layer's input, computed through the layer's backward matrix."""

    @staticmethod
    def forward(ctx, layer: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.layer, ctx.input_shape = layer, x.shape
        # A new tensor on the same storage, not a view of ``out``: an in-place op after the
        # layer (ReLU(inplace=True)) stays allowed, and nothing is copied.
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return None, grad_out, input_gradient(ctx.layer, grad_out, ctx.input_shape)


def _conv_padding(layer: nn.Conv2d) -> tuple[int, int]:
    """The layer's zero padding per side; a ValueError for a padding this module cannot invert."""
    if layer.padding_mode != "zeros":
        raise ValueError(
            f"fa/sign support zero-padded Conv2d only, got padding_mode={layer.padding_mode!r}"
        )
    if layer.padding == "valid":
        return (0, 0)
    if isinstance(layer.padding, str):
        raise ValueError(f"fa/sign need an explicit Conv2d padding, got {layer.padding!r}")
    top, side = layer.padding
    return (int(top), int(side))


def input_gradient(
    layer: nn.Module, grad_out: torch.Tensor, input_shape: torch.Size
) -> torch.Tensor:
    """``dL/dx`` of shape ``input_shape`` from ``dL/dout`` with ``B_l`` in place of ``W_l``.

    Linear: ``(N, *, out) @ (out, in)``; Conv1D (weight ``(in, out)``): ``@ B_l^T``. Conv2d:
    the transposed convolution of BP, with ``B_l``.
    """
    B, scale = backward_factors(layer)
    B = B.to(grad_out.dtype)  # e.g. under autocast; free otherwise
    if scale is not None and B.numel() <= math.prod(input_shape):
        B, scale = B * scale, None  # scale the smaller of B and the result
    if isinstance(layer, nn.Conv2d):
        grad = conv2d_input(
            input_shape,
            B,
            grad_out,
            layer.stride,
            _conv_padding(layer),
            layer.dilation,
            layer.groups,
        )
    elif is_conv1d(layer):
        grad = grad_out @ B.mT
    else:
        grad = grad_out @ B
    return grad if scale is None else grad * scale


def _detach_input(layer: nn.Module, args: tuple):
    x = args[0]
    if not (layer.__dict__["feedback_enabled"] and torch.is_grad_enabled() and x.requires_grad):
        return None
    layer.__dict__["_feedback_input"] = x  # for _attach_input, right after this call
    return (x.detach(), *args[1:])


def _attach_input(layer: nn.Module, args: tuple, out: torch.Tensor):
    x = layer.__dict__.pop("_feedback_input", None)
    if x is None:
        return None
    return _BackwardThrough.apply(layer, out, x)


def _convert(model: nn.Module, method: str, seed: int) -> nn.Module:

    model = copy.deepcopy(model)
    layers = [
        m
        for m in model.modules()
        if isinstance(m, (*WEIGHT_LAYERS, nn.MultiheadAttention)) or is_conv1d(m)
    ]
    if not layers:
        raise ValueError("found no nn.Linear, nn.Conv2d or attention layer to convert")
    done = [type(m).__name__ for m in layers if hasattr(m, "feedback_method")]
    if done:
        raise ValueError(
            f"the model is already converted to a layer method ({', '.join(done)}); convert "
            "the original model"
        )
    gen = torch.Generator().manual_seed(feedback_seed(seed))
    for layer in layers:  # model.modules() order: B_l drawn in that order
        if isinstance(layer, nn.Conv2d):
            _conv_padding(layer)
        # Plain attributes (what nn.Module.__setattr__ does with a str or a bool).
        layer.__dict__.update(feedback_method=method, feedback_enabled=True)
        if isinstance(layer, nn.MultiheadAttention):
            convert_attention(layer, method, gen)
            continue
        if method in DRAWN:  # frsf and brsf keep only the magnitudes; the signs follow W_l
            w = _weight(layer)
            layer.register_buffer(DRAWN[method], draw(method, w, fan_in(layer, w), gen))
        layer.register_forward_pre_hook(_detach_input)
        layer.register_forward_hook(_attach_input)
    for node in model.modules():
        if isinstance(node, DFA):
            node.switch_off()  # the back-propagated signal must cross its points
    return model


# Mixed into the seed of B_l's generator (the 64-bit golden ratio). With the seed itself, a model
# built right after torch.manual_seed(seed) would get B_l equal to W_l wherever the two streams
# line up: the first layer always, and every layer of a bias-free net (a torchvision ResNet's
# convolutions), where FA then back-propagated exactly.
STREAM = 0x9E3779B97F4A7C15


def feedback_seed(seed: int) -> int:
    """The seed of the generator that draws ``B_l`` (fa) and ``|R_l|`` (frsf, brsf) for
    ``seed``."""
    return (int(seed) ^ STREAM) & 0xFFFF_FFFF_FFFF_FFFF


def to_fa(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` trained by feedback alignment (Lillicrap et al. 2016).

    Every ``nn.Linear``/``nn.Conv2d`` (``Bottleneck`` included) back-propagates to its input
    through a fixed random ``B_l`` (buffer ``feedback_weight``, the shape of ``W_l``), drawn in
    ``model.modules()`` order from a ``torch.Generator`` seeded by :func:`feedback_seed` of
    ``seed`` (never the stream that ``torch.manual_seed(seed)`` initialized the weights
    from). Entries are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the distribution of PyTorch's
    initial weights.
    Works on any ``nn.Module``. A :class:`~dfatools.DFA` node inside is switched off: its points
    become markers where :func:`~dfatools.measure_alignment` measures. Train with a plain
    ``loss.backward()``; ``with model.backprop()`` (a :class:`~dfatools.DFASequential`) or
    :func:`exact_layers` gives exact BP.
    """
    return _convert(model, "fa", seed)


def to_sign(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` trained by sign symmetry: the backward matrix of each
    ``nn.Linear``/``nn.Conv2d`` is ``sign(W_l) * mean(|W_l|)``, from the current ``W_l``.

    The sign pattern follows ``W_l`` as it learns (uSF, Liao et al. 2016; Xiao et al. 2018). The
    scale: the references used magnitude 1 and relied on Batch Manhattan updates or batch norm
    to make it irrelevant; with plain SGD it is not, and ``mean(|W_l|)``, one number per layer,
    is the least-squares fit of ``W_l`` by ``c * sign(W_l)``, so the signals keep BP's scale
    without per-unit magnitudes (which would carry weight information sign symmetry forgoes).
    Nothing random: no buffer is added. Otherwise as :func:`to_fa`.
    """
    return _convert(model, "sign", seed=0)


def to_rsf(model: nn.Module, method: str, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` trained by random-magnitude sign-concordant feedback (Moskovitz,
    Litwin-Kumar, Abbott 2018): each ``nn.Linear``/``nn.Conv2d`` back-propagates through
    ``B_l = |R_l| * sign(W_l)``, the signs of the current ``W_l`` with random magnitudes.

    * ``method="frsf"`` (fixed random magnitudes): ``|R_l|`` drawn once, as :func:`to_fa` draws
      ``B_l`` (same generator and order for the same ``seed``), buffer ``feedback_magnitude``.
    * ``method="brsf"`` (batchwise random magnitudes): the same ``|R_l|``, read at every
      backward pass (every batch) from a new random offset, wrapping around
      (:func:`sign_times_shifted`): new magnitudes for every entry at the cost of one random
      number, drawn from the global CPU generator (so a training loop that checkpoints the RNG
      states resumes exactly). Before dfatools 0.4.0, every magnitude was drawn anew.

    Magnitudes are ``U(0, 1/sqrt(fan_in))``, the absolute value of PyTorch's initial weights,
    so the signals start at BP's scale, as with :func:`to_fa` and :func:`to_sign`. Otherwise
    as :func:`to_fa`.
    """
    if method not in ("brsf", "frsf"):
        raise ValueError(f"to_rsf takes method 'brsf' or 'frsf', got {method!r}")
    return _convert(model, method, seed)


def layer_method(model: nn.Module) -> str | None:
    """``"fa"``, ``"sign"``, ``"brsf"`` or ``"frsf"`` when ``model`` holds layers converted by
    :func:`to_fa`, :func:`to_sign` or :func:`to_rsf`, else None."""
    methods = {
        m.__dict__["feedback_method"] for m in model.modules() if hasattr(m, "feedback_method")
    }
    if len(methods) > 1:
        raise ValueError(f"the model mixes layer methods {sorted(methods)}")
    return methods.pop() if methods else None


@contextlib.contextmanager
def exact_layers(model: nn.Module) -> Iterator[None]:
    """Within the block, converted layers back-propagate through ``W_l``: exact gradients."""
    flags = [m.__dict__ for m in model.modules() if hasattr(m, "feedback_enabled")]
    saved = [f["feedback_enabled"] for f in flags]
    for f in flags:
        f["feedback_enabled"] = False
    try:
        yield
    finally:
        for f, flag in zip(flags, saved):
            f["feedback_enabled"] = flag
