"""The architectures a run can train, found by name (DESIGN.md 4, 9, 14): each with an options
dataclass of its own and a builder in :mod:`mltools.models.networks`.

No torch here: sweeps plan, and reports read, runs without it. ``mltools.training.train.build_net``
calls the builders when a network is wanted.

>>> get("gpt").options(width=64).depth
4
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Union

ACTIVATIONS = ("tanh", "relu", "leaky0.5", "leaky0.1", "leaky0.01")
# Feedback points of the CNN. all: a point before every hidden weight layer | 2019: as the 2019
# code, none before the output layer (its Linear(576, 128) got BP, docs/deviations.md).
CNN_POINTS = ("all", "2019")
BOTTLENECK_MODES = ("mask", "width")
# Feedback points of the bottleneck net (docs/deviations-bottleneck.md). all: one before every
# hidden weight layer | 2019: as the 2019 code, none before the bottleneck layer, and its
# input-gradient mask in training | 2019-nomask: that placement without the mask.
BOTTLENECK_POINTS = ("all", "2019", "2019-nomask")
FULL_WIDTH = 800  # the paper's hidden width, the bottleneck net's unless told
NORMS = ("pre", "post")  # Transformer block layouts (networks.NORMS tells them apart)
ERROR_SITES = ("logits", "hidden")  # where a Transformer's DFA node takes the error
LM_POINTS = ("macro", "micro")  # the character GPT's feedback points (networks.lm_points)


def _choose(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {choices}")


@dataclass
class FCOptions:
    """The paper's fully connected network: 3 hidden layers of 800 (``networks.fc``)."""

    act: str = "tanh"  # ACTIVATIONS
    batch_norm: bool = False
    input_dropout: float = 0.0
    dropout: float = 0.0  # after the hidden Linear layers

    def check(self) -> None:
        _choose("activation", self.act, ACTIVATIONS)


@dataclass
class CNNOptions:
    """The paper's CNN (``networks.cnn``)."""

    act: str = "tanh"
    batch_norm: bool = False
    input_dropout: float = 0.0
    conv_dropout: float = 0.0  # Dropout2d after the conv layers
    dropout: float = 0.0  # after the hidden Linear layer
    min_side: int = 32  # smaller inputs are upsampled to this side
    points: str = "all"  # CNN_POINTS

    def check(self) -> None:
        _choose("activation", self.act, ACTIVATIONS)
        _choose("cnn points", self.points, CNN_POINTS)


@dataclass
class BottleneckOptions:
    """The paper's bottleneck net: one hidden layer of ``size`` trainable units or entries
    (``networks.bottleneck_net``)."""

    size: int | None = None  # required to build
    mode: str = "mask"  # BOTTLENECK_MODES
    points: str = "all"  # BOTTLENECK_POINTS
    width: int = FULL_WIDTH

    def check(self) -> None:
        _choose("bottleneck mode", self.mode, BOTTLENECK_MODES)
        _choose("bottleneck points", self.points, BOTTLENECK_POINTS)
        if self.points != "all" and self.mode != "mask":
            raise ValueError(
                f"bottleneck points {self.points!r} are the 2019 code's mask-mode bottleneck "
                f"net; got mode {self.mode!r}"
            )
        if self.size is None:
            raise ValueError("the bottleneck net needs a size")


@dataclass
class ResNetOptions:
    """A small CIFAR-style ResNet, feedback points at its BasicBlocks (``networks.resnet``)."""

    def check(self) -> None:
        pass


@dataclass
class TransformerOptions:
    """A Transformer encoder over image rows (``networks.RowTransformer``)."""

    norm: str = "pre"  # NORMS: pre (x + f(LN(x))) | post (LN(x + f(x)), the 2020 paper's)
    error_at: str = "logits"  # ERROR_SITES: the output | hidden, the head's input

    def check(self) -> None:
        _choose("block layout", self.norm, NORMS)
        _choose("error site", self.error_at, ERROR_SITES)


@dataclass
class GPTOptions:
    """A character-level GPT (``networks.CharGPT``); its context is the data's window length."""

    width: int = 128  # heads of 32 dimensions
    depth: int = 4  # blocks
    points: str = "macro"  # LM_POINTS: every block's output | inside every block
    norm: str = "pre"
    error_at: str = "logits"

    def check(self) -> None:
        _choose("gpt points", self.points, LM_POINTS)
        _choose("block layout", self.norm, NORMS)
        _choose("error site", self.error_at, ERROR_SITES)


ModelOptions = Union[
    FCOptions, CNNOptions, BottleneckOptions, ResNetOptions, TransformerOptions, GPTOptions
]


@dataclass(frozen=True)
class Architecture:
    """A name, its options, and the :mod:`mltools.models.networks` function that builds it:
    ``builder(options, input_shape, num_classes, cfg) -> (net, placement)``, where
    ``placement`` holds the ``dfatools.to_dfa`` keywords that place its feedback points and
    error (``points``, ``exact_top``, ``error_at``, and ``num_classes`` when the error is not
    the output's)."""

    name: str
    options: type
    builder: str
    # Its options' names in config.json files written before options were nested (flat name ->
    # option): a key map that only the reader of old files uses.
    flat: dict[str, str]
    stream: bool = False  # Transformer blocks: runs record the residual stream (stream_norm)


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "fc", FCOptions, "build_fc", _same("act", "batch_norm", "input_dropout", "dropout")
        ),
        Architecture(
            "cnn",
            CNNOptions,
            "build_cnn",
            {
                **_same("act", "batch_norm", "input_dropout", "conv_dropout", "dropout"),
                "cnn_min_side": "min_side",
                "cnn_points": "points",
            },
        ),
        Architecture(
            "bottleneck",
            BottleneckOptions,
            "build_bottleneck",
            {
                "bottleneck_size": "size",
                "bottleneck_mode": "mode",
                "bottleneck_points": "points",
                "width": "width",
            },
        ),
        Architecture("resnet", ResNetOptions, "build_resnet", {}),
        Architecture(
            "transformer",
            TransformerOptions,
            "build_transformer",
            _same("norm", "error_at"),
            stream=True,
        ),
        Architecture(
            "gpt",
            GPTOptions,
            "build_gpt",
            {"lm_width": "width", "lm_depth": "depth", "lm_points": "points"}
            | _same("norm", "error_at"),
            stream=True,
        ),
    )
}
ARCHS = tuple(ARCHITECTURES)
# Every flat name an old config.json may hold for some architecture's option.
FLAT_NAMES = frozenset(k for a in ARCHITECTURES.values() for k in a.flat)


def get(name: str) -> Architecture:
    """The architecture called ``name``; ValueError naming the known ones otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {ARCHS}")
    return ARCHITECTURES[name]


def options_of(arch: str, given: Any = None) -> ModelOptions:
    """``arch``'s options from ``given``: None (the defaults), a dict of option names, or an
    instance of its options class. ValueError for another class or an unknown option."""
    cls = get(arch).options
    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if isinstance(given, dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not an option of arch {arch!r} "
                f"(its options: {', '.join(sorted(names)) or 'none'})"
            )
        return cls(**given)
    raise ValueError(f"arch {arch!r} takes {cls.__name__}, not {type(given).__name__}")


def from_flat(arch: str, flat: dict) -> dict:
    """The nested ``model`` options of an old, flat config.json: ``arch``'s own flat keys
    renamed, every other architecture's dropped (they held defaults that meant nothing)."""
    names = get(arch).flat
    return {names[k]: v for k, v in flat.items() if k in names}
