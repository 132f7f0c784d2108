"""Finding the DFA node, and the weight layers around each feedback point, in any model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .feedback import DFA, WEIGHT_LAYERS, FeedbackPoint


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

    h: torch.Tensor  # h_l, (N, *), still in the graph
    below: list[nn.Module] = field(default_factory=list)  # weight layers producing block l
    above: nn.Module | None = None  # first weight layer reading h_l
    above_out: torch.Tensor | None = None  # its output, (N, out)


@contextlib.contextmanager
def trace_points(model: nn.Module, node: DFA) -> Iterator[list[PointTrace]]:
    """Within the block, each forward pass fills one :class:`PointTrace` per feedback point.

    Hooks record the order in which weight layers and points run, so this works for hand-written
    models as well as :func:`to_dfa` ones. Use it with ``node.backprop()`` so ``h_l`` stays in
    the graph of everything below it.
    """
    traces: list[PointTrace] = []
    index = {id(p): i for i, p in enumerate(node.points)}
    pending: list[nn.Module] = []  # weight layers run since the last point

    def on_point(module, inputs, output):
        traces.append(PointTrace(h=inputs[0], below=list(pending)))
        pending.clear()

    def on_layer(module, inputs, output):
        if traces and traces[-1].above is None:
            traces[-1].above, traces[-1].above_out = module, output
        pending.append(module)

    handles = []
    for m in model.modules():
        if isinstance(m, FeedbackPoint) and id(m) in index:
            handles.append(m.register_forward_hook(on_point))
        elif isinstance(m, WEIGHT_LAYERS):
            handles.append(m.register_forward_hook(on_layer))
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
