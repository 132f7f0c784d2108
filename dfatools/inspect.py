"""Finding the DFA node, and the weight layers around each feedback point, in any model."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .fa import exact_layers
from .feedback import DFA, WEIGHT_LAYERS


def find_dfa(model: nn.Module) -> DFA:
    """The single :class:`DFA` node inside ``model``."""
    nodes = [m for m in model.modules() if isinstance(m, DFA)]
    if len(nodes) != 1:
        raise ValueError(
            f"expected exactly one dfatools.DFA node in the model, found {len(nodes)}; "
            "build it with dfatools.to_dfa or pass the output through dfatools.DFA"
        )
    return nodes[0]


@dataclass
class PointTrace:
    """What one forward pass showed around feedback point ``l``."""

    index: int  # the point's place in node.points
    h: torch.Tensor  # h_l, (N, *), still in the graph
    below: list[nn.Module] = field(default_factory=list)  # weight layers producing block l
    above: nn.Module | None = None  # first weight layer run after h_l
    above_in: torch.Tensor | None = None  # its input: h_l itself when it reads the point
    above_out: torch.Tensor | None = None  # its output, (N, *, out)


@contextlib.contextmanager
def trace_points(model: nn.Module, node: DFA) -> Iterator[list[PointTrace]]:
    """Within the block, each forward pass fills one :class:`PointTrace` per feedback point.

    Hooks record the order in which weight layers and points run, so this works for hand-written
    models as well as :func:`to_dfa` ones. Use it with ``node.backprop()`` so ``h_l`` stays in
    the graph of everything below it. The traces are in the order of ``node.points`` (the
    order of the matrices), whatever order the points ran in.
    """
    traces: list[PointTrace] = []  # in node order
    last: list[PointTrace] = []  # the point that ran last
    pending: list[nn.Module] = []  # weight layers run since the last point

    def on_point(index: int):
        def hook(module, inputs, output):
            trace = PointTrace(index=index, h=inputs[0], below=list(pending))
            bisect.insort(traces, trace, key=lambda t: t.index)
            last[:] = [trace]
            pending.clear()

        return hook

    def on_layer(module, inputs, output):
        if last and last[0].above is None:
            last[0].above, last[0].above_in, last[0].above_out = module, inputs[0], output
        pending.append(module)

    handles = [p.register_forward_hook(on_point(i)) for i, p in enumerate(node.points)]
    handles += [
        m.register_forward_hook(on_layer) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)
    ]
    try:
        yield traces
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode within the block; each submodule's own train/eval flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag


@contextlib.contextmanager
def backprop(model: nn.Module) -> Iterator[None]:
    """Exact back-propagation on a converted ``model`` within the block: every feedback point
    is an identity and fa/sign layers back-propagate through ``W_l``.

    >>> with dfatools.backprop(model):
    ...     F.cross_entropy(model(x), y).backward()   # true gradients everywhere
    """
    with find_dfa(model).backprop(), exact_layers(model):
        yield
