"""``to_dfa``: turn a plain ``nn.Sequential`` into a DFA-trained one."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from torch import nn

from .fa import exact_layers
from .feedback import DFA, WEIGHT_LAYERS, FeedbackPoint


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
        return self[-1]

    @property
    def feedback_points(self) -> list[FeedbackPoint]:
        """The feedback points, in forward order."""
        return list(self.feedback.points)

    @contextlib.contextmanager
    def backprop(self) -> Iterator[None]:
        """Exact back-propagation on this same module within the block (feedback points and
        fa/sign layers alike)."""
        with self.feedback.backprop(), exact_layers(self):
            yield


def to_dfa(
    model: nn.Sequential,
    num_classes: int,
    normalize: bool = True,
    feedback: str = "shared",
    error: str = "sum",
    seed: int = 0,
    exact_top: int = 1,
    signal: str = "error",
) -> DFASequential:
    """A deep copy of ``model`` trained by DFA (the given model is left untouched).

    Nested ``nn.Sequential`` containers are flattened. A feedback point goes before every
    ``nn.Linear``/``nn.Conv2d``/``Bottleneck`` but the first and the top ``exact_top - 1``; the
    top ``exact_top`` weight layers (default 1: the output layer) get their true gradient,
    back-propagated from the output. ``exact_top=2`` reproduces the 2019 code's CNN, whose last
    hidden Linear layer was trained by BP. See :class:`DFA` for ``normalize``, ``feedback``,
    ``error``, ``seed`` and ``signal`` (``"target"``: DRTP, ``"none"``: shallow training).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"to_dfa takes an nn.Sequential, got {type(model).__name__}; for other "
            "models place dfatools.FeedbackPoint modules yourself and pass the "
            "output through dfatools.DFA (see the README)"
        )
    layers = _flatten(copy.deepcopy(model))
    for layer in layers:
        if not isinstance(layer, WEIGHT_LAYERS) and _has_hidden_weights(layer):
            raise TypeError(
                f"to_dfa cannot see inside {type(layer).__name__}, which holds "
                "weight layers; place dfatools.FeedbackPoint modules yourself"
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
    modules, points, seen = [], [], 0
    for layer in layers:
        if isinstance(layer, WEIGHT_LAYERS):
            if 0 < seen <= n_weight - exact_top:
                points.append(FeedbackPoint())
                modules.append(points[-1])
            seen += 1
        modules.append(layer)
    modules.append(
        DFA(
            points,
            num_classes,
            normalize=normalize,
            feedback=feedback,
            error=error,
            seed=seed,
            signal=signal,
        )
    )
    return DFASequential(*modules)
