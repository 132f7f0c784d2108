"""Feedback points on any ``nn.Module``, attached with hooks (DESIGN.md 9).

A point sits at the output of a submodule chosen by type or by qualified name. The converted
model is a deep copy of the user's: same classes, same forward code, same ``state_dict`` keys,
plus the DFA node as a submodule named ``feedback`` (its matrices are the only new keys).

Three hooks do the work:

* on each chosen submodule, a forward hook hands its output to a :class:`FeedbackPoint`, which
  records it and returns ``h_l.detach()`` to everything downstream;
* on the model itself, a forward hook passes the output ``y`` through the :class:`DFA` node
  (with ``error_at=NAME``, the hook sits on the submodule ``NAME`` instead, and the node on
  its output ``z``: DESIGN.md 14);
* also on the model, a forward pre-hook forgets what an interrupted forward pass recorded.

The hooks are small module-holding objects rather than closures, so ``copy.deepcopy`` of a
converted model (as :func:`~dfatools.to_fa` does) gives hooks that point at the copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator, Sequence
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
        self.node: DFA | None = None  # set once the node exists: a point after its error site

    def __call__(self, module: nn.Module, args: tuple, output):
        if self.node is not None and self.node.site_calls:
            raise RuntimeError(
                f"feedback point {self.point.name!r} ran after the error site "
                f"{self.node.error_at!r}; every point must lie before error_at"
            )
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
    """Forward hook of the model, or of its ``error_at`` submodule: the tensor ``y`` (``z``) of
    that output goes through the DFA node."""

    def __init__(self, node: DFA) -> None:
        self.node = node

    def __call__(self, module: nn.Module, args: tuple, output):
        node = self.node
        if node.error_at is not None:
            if node.site_calls:
                raise RuntimeError(
                    f"the error site {node.error_at!r} ran twice in one forward pass; error_at "
                    "must name a submodule that runs once per forward"
                )
            node.site_calls += 1
        spec = node.output
        return outputs.replace(output, spec, node(outputs.select(output, spec)))


class _ClearHook:
    """Forward pre-hook of the model: a pass that raised half-way left records behind."""

    def __init__(self, node: DFA) -> None:
        self.node = node

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.node.site_calls = 0
        for p in self.node.points:
            p.clear()


class _SiteCheck:
    """Forward hook of the model under ``error_at``: the site must have run in the pass."""

    def __init__(self, node: DFA) -> None:
        self.node = node

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        ran, self.node.site_calls = self.node.site_calls, 0  # a module called alone later is free
        if not ran:
            for p in self.node.points:
                p.clear()
            raise RuntimeError(
                f"the error site {self.node.error_at!r} did not run in this forward pass; "
                "error_at must name a submodule the model's forward calls"
            )


@contextlib.contextmanager
def forward_site(model: nn.Module, node: DFA) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward pass of ``model`` appends the tensor the DFA ``node``
    sits on: ``y`` in the model's output, or ``z`` at its ``error_at`` submodule (as that
    module returned it, before the node). With :func:`model_output` it gives what alignment and
    PAI differentiate: the loss of the model's output, and the gradient at the node."""
    seen: list[torch.Tensor] = []
    site = model if node.error_at is None else model.get_submodule(node.error_at)

    def hook(module: nn.Module, args: tuple, output) -> None:
        seen.append(outputs.select(output, node.output))

    # Before the node's own hook: the tensor still in the graph of everything below it.
    handle = site.register_forward_hook(hook, prepend=True)
    try:
        yield seen
    finally:
        handle.remove()


def model_output(result, node: DFA) -> torch.Tensor:
    """What the loss reads from a model's ``result``: the node's ``y`` (``output=``), or the
    output itself when the node sits at an ``error_at`` site inside the model."""
    return outputs.select(result, node.output) if node.error_at is None else result


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


def attach(
    model: nn.Module,
    num_classes: int,
    points: PointSpec,
    error_at: str | None = None,
    **node_options,
) -> nn.Module:
    """A deep copy of ``model`` with a feedback point at the output of each submodule that
    ``points`` names, and the :class:`DFA` node (``node_options``) on its output, or on the
    output of the submodule ``error_at`` names."""
    if hasattr(model, NODE_NAME):
        raise ValueError(
            f"{type(model).__name__} already has an attribute {NODE_NAME!r} (a converted "
            "model?); dfatools adds its DFA node under that name"
        )
    if error_at is not None and type(model).forward is nn.Sequential.forward:
        raise ValueError(
            "error_at needs a model with a forward of its own: an nn.Sequential would run the "
            "DFA node, added as its last module, on its output too; put the layers after the "
            "error site in a module that calls the Sequential"
        )
    model = copy.deepcopy(model)
    chosen = resolve_points(model, points)
    site = _site(model, error_at, [name for name, _ in chosen]) if error_at is not None else None
    feedback_points, point_hooks = [], []
    for name, module in chosen:
        point = FeedbackPoint(name)
        point_hooks.append(_PointHook(point))
        module.register_forward_hook(point_hooks[-1])
        feedback_points.append(point)
    node = DFA(feedback_points, num_classes, error_at=error_at, **node_options)
    model.add_module(NODE_NAME, node)
    model.register_forward_pre_hook(_ClearHook(node))
    if site is not None:
        for hook in point_hooks:
            hook.node = node
        site.register_forward_hook(_OutputHook(node))
        model.register_forward_hook(_SiteCheck(node))
        return model
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


def _site(model: nn.Module, error_at: str, points: list[str]) -> nn.Module:
    """The submodule ``error_at`` names; ValueError when there is none, or when it is the
    model itself or sits inside a point's module (a point would then run after it)."""
    modules = dict(model.named_modules())
    if not isinstance(error_at, str) or not error_at or error_at not in modules:
        near = [n for n in modules if n and n.split(".")[0] == str(error_at).split(".")[0]][:6]
        raise ValueError(
            f"error_at={error_at!r}: no submodule of that name in {type(model).__name__} "
            f"(names come from model.named_modules(){'; nearby: ' + str(near) if near else ''})"
        )
    inside = [p for p in points if error_at.startswith(p + ".")]
    if inside:
        raise ValueError(
            f"error_at={error_at!r} lies inside the feedback point {inside[0]!r}, whose output "
            "comes after it; every point must lie before the error site"
        )
    return modules[error_at]


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
