"""Feedback points on any ``nn.Module``, attached with hooks (DESIGN.md 9).

A point sits at the output of a submodule chosen by type or by qualified name. The converted
model is a deep copy of the user's: same classes, same forward code, same ``state_dict`` keys,
plus the DFA node as a submodule named ``feedback`` (its matrices are the only new keys).

Three hooks do the work:

* on each chosen submodule, a forward hook hands its output to a :class:`FeedbackPoint`, which
  records it and returns ``h_l.detach()`` to everything downstream;
* on the model itself, a forward hook passes the output ``y`` through the :class:`DFA` node;
* also on the model, a forward pre-hook forgets what an interrupted forward pass recorded.

The hooks are small module-holding objects rather than closures, so ``copy.deepcopy`` of a
converted model (as :func:`~dfatools.to_fa` does) gives hooks that point at the copy.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from . import outputs
from .feedback import DFA, WEIGHT_LAYERS, FeedbackPoint

NODE_NAME = "feedback"  # the converted model's attribute holding the DFA node
PointSpec = Sequence[Union[type, str]]


class _PointHook:
    """Forward hook of a chosen submodule: its output goes through the feedback point. A
    module returning a tuple or list (``nn.LSTM``, Hugging Face blocks) has its first tensor
    go through; the other items pass on untouched, so a hidden state handed on that way
    carries the true gradient."""

    def __init__(self, point: FeedbackPoint) -> None:
        self.point = point

    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, torch.Tensor):
            return self.point(output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return outputs.replace(output, 0, self.point(output[0]))
        raise TypeError(
            f"feedback point {self.point.name!r}: {type(module).__name__} returns a "
            f"{type(output).__name__}, not a tensor or a tuple starting with one; put the point "
            "on a submodule that does"
        )


class _OutputHook:
    """Forward hook of the model: the tensor ``y`` of its output goes through the DFA node."""

    def __init__(self, node: DFA) -> None:
        self.node = node

    def __call__(self, module: nn.Module, args: tuple, output):
        spec = self.node.output
        return outputs.replace(output, spec, self.node(outputs.select(output, spec)))


class _ClearHook:
    """Forward pre-hook of the model: a pass that raised half-way left records behind."""

    def __init__(self, node: DFA) -> None:
        self.node = node

    def __call__(self, module: nn.Module, args: tuple) -> None:
        for p in self.node.points:
            p.clear()


def resolve_points(model: nn.Module, points: PointSpec) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every submodule that ``points`` names, in the order of
    ``model.named_modules()`` (definition order, which is forward order in most models).

    ``points`` holds module types (every submodule of that type) and qualified names.
    """
    if isinstance(points, (str, type)) or not points:
        raise TypeError(
            "points must be a non-empty list of module types or qualified names, e.g. "
            "points=[torchvision.models.resnet.BasicBlock] or points=['layer1', 'layer2.0']"
        )
    modules = dict(model.named_modules())
    del modules[""]  # the model itself: its output is y, where the DFA node sits
    chosen: set[str] = set()
    for spec in points:
        if isinstance(spec, str):
            if spec not in modules:
                near = [n for n in modules if n.startswith(spec.split(".")[0])][:6]
                hint = f"; names nearby: {near}" if near else ""
                raise ValueError(
                    f"no submodule named {spec!r} in {type(model).__name__} (names come from "
                    f"model.named_modules(){hint})"
                )
            chosen.add(spec)
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            found = [n for n, m in modules.items() if isinstance(m, spec)]
            if not found:
                types = sorted({type(m).__name__ for m in modules.values()})
                raise ValueError(
                    f"no submodule of type {spec.__name__} in {type(model).__name__}; it has "
                    f"{', '.join(types)}"
                )
            chosen.update(found)
        else:
            raise TypeError(f"points entries are nn.Module types or qualified names, got {spec!r}")
    return [(n, m) for n, m in modules.items() if n in chosen]


def suggest_points(model: nn.Module) -> str:
    """A ``points=`` suggestion for ``model``: the repeated block types holding weight layers."""
    counts = Counter(
        type(m)
        for name, m in model.named_modules()
        if name
        and not isinstance(m, (nn.Sequential, nn.ModuleList, *WEIGHT_LAYERS))
        and any(isinstance(w, WEIGHT_LAYERS) for w in m.modules())
    )
    repeated = [t for t, c in counts.most_common() if c > 1]
    if repeated:
        t = repeated[0]
        return f"points=[{t.__module__}.{t.__qualname__}] (its {counts[t]} blocks)"
    children = [n for n, _ in model.named_children()][:-1]
    return f"points={children}" if children else "points=[...]"


def attach(model: nn.Module, num_classes: int, points: PointSpec, **node_options) -> nn.Module:
    """A deep copy of ``model`` with a feedback point at the output of each submodule that
    ``points`` names, and the :class:`DFA` node (``node_options``) on its output."""
    if hasattr(model, NODE_NAME):
        raise ValueError(
            f"{type(model).__name__} already has an attribute {NODE_NAME!r} (a converted "
            "model?); dfatools adds its DFA node under that name"
        )
    model = copy.deepcopy(model)
    chosen = resolve_points(model, points)
    feedback_points = []
    for name, module in chosen:
        point = FeedbackPoint(name)
        module.register_forward_hook(_PointHook(point))
        feedback_points.append(point)
    node = DFA(feedback_points, num_classes, **node_options)
    model.add_module(NODE_NAME, node)
    model.register_forward_pre_hook(_ClearHook(node))
    # A plain nn.Sequential runs every submodule in order, so the node, added last, already
    # sits on the output; any other model gets it through a hook.
    if type(model).forward is nn.Sequential.forward and node.output is not None:
        raise ValueError(
            "output= names a tensor in a structured output; an nn.Sequential "
            "returns its last module's output"
        )
    if type(model).forward is not nn.Sequential.forward:
        model.register_forward_hook(_OutputHook(node))
    return model


# Buffers that the layer methods add to weight layers (dfatools.fa), and with a prefix
# (in_proj_feedback_weight) to attention layers (dfatools.attention).
LAYER_BUFFERS = ("feedback_weight", "feedback_magnitude")


def original_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without what dfatools added: the DFA node's matrices and the
    fa/frsf backward matrices. For a model converted with ``points=``, it loads with
    ``load_state_dict`` into the original class (nothing else is renamed).

    >>> resnet18(num_classes=10).load_state_dict(dfatools.original_state_dict(model))
    """
    nodes = [name + "." for name, m in model.named_modules() if isinstance(m, DFA)]
    return {
        key: value
        for key, value in model.state_dict().items()
        if not any(key.startswith(prefix) for prefix in nodes)
        and not key.rsplit(".", 1)[-1].endswith(LAYER_BUFFERS)
    }
