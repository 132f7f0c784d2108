"""``to_dfa``: turn a model into a DFA-trained one.

Two placements: the paper's rule for a plain ``nn.Sequential`` (a point before every weight
layer but the first, :class:`DFASequential`), and ``points=`` for any ``nn.Module`` (a point at
the output of each chosen submodule, attached with hooks: :mod:`dfatools.placement`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from torch import nn

from .fa import exact_layers
from .feedback import DFA, WEIGHT_LAYERS, FeedbackPoint
from .outputs import OutputSpec
from .placement import PointSpec, attach, suggest_points


def _flatten(module: nn.Sequential) -> list[nn.Module]:
    layers = []
    for child in module:
        layers.extend(_flatten(child) if isinstance(child, nn.Sequential) else [child])
    return layers


def _has_hidden_weights(module: nn.Module) -> bool:
    return any(isinstance(m, WEIGHT_LAYERS) for m in module.modules())


class DFASequential(nn.Sequential):
    """An ``nn.Sequential`` with feedback points before every weight layer but the first, ending
    with the :class:`DFA` node. Build it with :func:`to_dfa`.

    Shape: whatever the wrapped network takes, ``(N, K)`` out.
    """

    @property
    def feedback(self) -> DFA:
        """The DFA output node that owns the feedback matrices."""
        node = self[-1]
        assert isinstance(node, DFA)
        return node

    @property
    def feedback_points(self) -> list[FeedbackPoint]:
        """The feedback points, in forward order."""
        return list(self.feedback.points)

    @contextlib.contextmanager
    def backprop(self) -> Iterator[None]:
        """Exact back-propagation on this same module within the block (feedback points and
        fa/sign layers alike); the same as :func:`dfatools.backprop` ``(self)``."""
        with self.feedback.backprop(), exact_layers(self):
            yield

    def forward(self, x):
        for p in self.feedback.points:
            p.clear()  # what a pass that raised half-way recorded
        return super().forward(x)


def to_dfa(
    model: nn.Module,
    num_classes: int,
    normalize: bool = True,
    feedback: str = "shared",
    error: str = "sum",
    seed: int = 0,
    exact_top: int = 1,
    signal: str = "error",
    points: PointSpec | None = None,
    output: OutputSpec = None,
    class_dim: int = -1,
    positions: str | None = None,
    error_at: str | None = None,
    data_parallel: bool | None = None,
) -> nn.Module:
    """A deep copy of ``model`` trained by DFA (the given model is left untouched).

    Train it with one plain ``loss.backward()``: the output layer gets its true gradient, each
    hidden block the DFA signal at its feedback point, back-propagated through that block only.

    ``points=None`` (an ``nn.Sequential`` only): the paper's rule. Nested ``nn.Sequential``
    containers are flattened, and a feedback point goes before every
    ``nn.Linear``/``nn.Conv2d``/``Bottleneck`` but the first and the top ``exact_top - 1``; the
    top ``exact_top`` weight layers (default 1: the output layer) get their true gradient,
    back-propagated from the output. ``exact_top=2`` reproduces the 2019 code's CNN, whose last
    hidden Linear layer was trained by BP. Returns a :class:`DFASequential`.

    ``points`` (any ``nn.Module``): where the signals enter, as module types (the output of
    every submodule of that type, e.g. ``[torchvision.models.resnet.BasicBlock]`` or
    ``[nn.TransformerEncoderLayer]``) and qualified names from ``model.named_modules()``
    (``["layer1.0", "layer2"]``). A point sits at the output of its submodule and hands
    ``h_l.detach()`` downstream, so no gradient crosses it: everything between one point (or
    the input) and the next learns from the next point's signal, and the layers after the last
    point from the true gradient. The copy keeps its class, forward code and ``state_dict``
    keys; the :class:`DFA` node is added as the submodule ``feedback`` (keys ``feedback.*``,
    the matrices). The output ``y`` may have position dimensions, ``(N, *, K)``.

    Models as researchers load them (DESIGN.md 11; with ``points=``): ``output`` names the
    tensor of a structured output the node sits on (``"logits"`` for a Hugging Face model, a
    tuple index, or a callable), and the model still returns its structure; ``class_dim=1``
    takes a channels-first output ``(N, K, *)`` such as a segmentation map; ``positions``
    (``"flat"`` or ``"shared"``) says how a point with more dimensions than the output (a
    block below a pooled classifier) gets its signal. Default: ``"shared"`` with ``points=``
    (measured on a small ResNet and a row Transformer on Fashion-MNIST: higher val and test
    top-1 and alignment than ``"flat"``; docs/results-field.md), ``"flat"`` under the
    ``nn.Sequential`` rule, the paper's. A 3-D point is read as ``(N, T, d)``: give a
    ``Conv1d`` block's ``(N, C, L)`` ``positions="flat"``. A point on a module returning a
    tuple (``nn.LSTM``, Hugging Face blocks) acts on its first tensor.

    ``error_at`` (with ``points=``; DESIGN.md 14): the qualified name of a submodule whose
    output ``z`` the DFA node sits on instead of the model's output, as Launay et al. 2020 took
    the error at a Transformer's last hidden state. The error is ``e = P * dL/dz``, the true
    gradient back-propagated through every layer after the submodule, and ``num_classes`` is
    the feature width of ``z``; the layers after it learn from the true gradient. The
    gradients are those of converting the sub-model that ends at that submodule with
    ``to_dfa(..., num_classes=width)`` and running the rest on top of it by plain autograd.
    Every point must lie before it; a submodule that does not run, or runs twice, in a forward
    pass is refused with a RuntimeError. ``output=`` then names the tensor in that
    submodule's output, and the loss reads the model's output as it is; ``class_dim`` is
    ``z``'s, so :func:`~dfatools.measure_alignment` and :func:`~dfatools.prealign` need a
    ``loss_fn`` when the model's output lays its classes out otherwise.

    >>> model = dfatools.to_dfa(gpt, 128, points=[Block], error_at="norm")  # z: (N, T, 128)

    ``data_parallel``: see :class:`DFA`; by default on whenever a ``torch.distributed`` process
    group is initialized (``DistributedDataParallel``, each rank a slice of every batch).

    See :class:`DFA` for ``normalize``, ``feedback``, ``error``, ``seed``, ``signal``
    (``"target"``: DRTP, ``"none"``: shallow training), ``output``, ``class_dim`` and
    ``positions``.

    >>> from torchvision.models import resnet18
    >>> from torchvision.models.resnet import BasicBlock
    >>> model = dfatools.to_dfa(resnet18(num_classes=10), 10, points=[BasicBlock])
    >>> F.cross_entropy(model(x), y).backward()
    """
    options: dict[str, Any] = dict(
        normalize=normalize,
        feedback=feedback,
        error=error,
        seed=seed,
        signal=signal,
        data_parallel=data_parallel,
    )
    if positions is None:
        positions = "flat" if points is None else "shared"
    layout = dict(output=output, class_dim=class_dim, positions=positions)
    if points is not None:
        if exact_top != 1:
            raise ValueError(
                "exact_top belongs to the nn.Sequential rule; with points=, leave out the "
                "points above which layers should get the true gradient"
            )
        return attach(model, num_classes, points, error_at=error_at, **options, **layout)
    if error_at is not None:
        raise ValueError(
            "error_at needs points=: the nn.Sequential rule puts the DFA node on the output"
        )
    if output is not None:
        raise ValueError(
            "output= names a tensor in a structured output; an nn.Sequential returns its last "
            "module's output"
        )
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"to_dfa needs points= for a {type(model).__name__} (only an nn.Sequential has a "
            f"default placement), e.g. to_dfa(model, {num_classes}, {suggest_points(model)})"
        )
    return _sequential_rule(model, num_classes, exact_top, options, class_dim, positions)


def _sequential_rule(
    model: nn.Sequential,
    num_classes: int,
    exact_top: int,
    options: dict[str, Any],
    class_dim: int,
    positions: str,
) -> DFASequential:
    """The paper's placement on a copy of ``model`` (see :func:`to_dfa`): a feedback point
    before every weight layer but the first and the top ``exact_top - 1``."""
    layers = _flatten(copy.deepcopy(model))
    for layer in layers:
        if not isinstance(layer, WEIGHT_LAYERS) and _has_hidden_weights(layer):
            raise TypeError(
                f"to_dfa's nn.Sequential rule cannot see inside {type(layer).__name__}, which "
                f"holds weight layers; say where the points go with points=, e.g. "
                f"{suggest_points(model)}"
            )
    n_weight = sum(isinstance(m, WEIGHT_LAYERS) for m in layers)
    if n_weight < 2:
        raise ValueError(
            f"a DFA network needs at least two weight layers (Linear, Conv2d or "
            f"Bottleneck), this one has {n_weight}"
        )
    if not (isinstance(exact_top, int) and 1 <= exact_top < n_weight):
        raise ValueError(
            f"exact_top must be an int in 1..{n_weight - 1} (this network has "
            f"{n_weight} weight layers and needs one feedback point), got {exact_top!r}"
        )
    last = [m for m in layers if isinstance(m, WEIGHT_LAYERS)][-1]
    if isinstance(last, nn.Linear) and last.out_features != num_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the output layer "
            f"({last.out_features} outputs)"
        )
    modules: list[nn.Module] = []
    feedback_points: list[FeedbackPoint] = []
    seen = 0
    for layer in layers:
        if isinstance(layer, WEIGHT_LAYERS):
            if 0 < seen <= n_weight - exact_top:
                feedback_points.append(FeedbackPoint())
                modules.append(feedback_points[-1])
            seen += 1
        modules.append(layer)
    modules.append(
        DFA(feedback_points, num_classes, **options, class_dim=class_dim, positions=positions)
    )
    return DFASequential(*modules)
