"""The paper's architectures (DESIGN.md 4) as plain ``nn.Sequential`` networks.

``dfatools.to_dfa`` turns any of them into a DFA-trained model; BP runs use the same module in
backprop mode, so both methods train exactly the same architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

import dfatools
from mltools.models import architectures
from mltools.models.architectures import ACTIVATIONS, ERROR_SITES, FULL_WIDTH, LM_POINTS, NORMS

if TYPE_CHECKING:
    from mltools.models.architectures import (
        BottleneckOptions,
        CNNOptions,
        FCOptions,
        GPTOptions,
        ResNetOptions,
        TransformerOptions,
    )
    from mltools.runs.config import RunConfig

CNN_SIDE = 32  # the paper's CNN is laid out for 32x32 inputs
BOTTLENECK_BLOCK = 1  # the bottleneck layer produces hidden block 1 (h2) in both modes
# The input mask's generator gets seed + this: seeded with ``seed`` itself, its bits would be
# those of the Bottleneck's weight mask (same generator, same keep probability), row for row.
INPUT_MASK_SEED_OFFSET = 2019


def activation(name: str) -> nn.Module:
    """``tanh``, ``relu`` or ``leaky<slope>`` (e.g. ``leaky0.1``)."""
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    if name.startswith("leaky"):
        return nn.LeakyReLU(float(name[len("leaky") :]))
    raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATIONS}")


def _block(
    layer: nn.Module, act: str, dropout: float, batch_norm: bool, features: int, conv: bool
) -> list[nn.Module]:
    """weight layer, [dropout], act, [BN]: the paper's order."""
    mods = [layer]
    if dropout > 0:
        mods.append(nn.Dropout2d(dropout) if conv else nn.Dropout(dropout))
    mods.append(activation(act))
    if batch_norm:
        mods.append(nn.BatchNorm2d(features) if conv else nn.BatchNorm1d(features))
    return mods


def fc(
    input_shape: tuple[int, ...],
    num_classes: int,
    act: str = "tanh",
    width: int = FULL_WIDTH,
    depth: int = 3,
    input_dropout: float = 0.0,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Flatten, ``depth`` x (Linear(., width), [dropout], act, [BN]), Linear(width, K).

    Shape: ``(N, *input_shape)`` in, ``(N, num_classes)`` out.
    """
    mods: list[nn.Module] = [nn.Flatten()]
    if input_dropout > 0:
        mods.append(nn.Dropout(input_dropout))
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        mods += _block(nn.Linear(fan_in, width), act, dropout, batch_norm, width, conv=False)
        fan_in = width
    mods.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*mods)


def cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    act: str = "tanh",
    input_dropout: float = 0.0,
    conv_dropout: float = 0.0,
    dropout: float = 0.0,
    batch_norm: bool = False,
    min_side: int = CNN_SIDE,
) -> nn.Sequential:
    """Three (Conv 5x5, [Dropout2d], act, [BN], MaxPool(3, 2)) blocks, Linear(., 128) block,
    Linear(128, K). Inputs smaller than ``min_side`` (default 32, the paper's layout) are first
    upsampled (bilinear) to it, so the layout also fits 28x28 MNIST and 8x8 digits. The three
    pools need a side of at least 15; the flatten size is computed from the resulting side.

    Shape: ``(N, C, H, W)`` in, ``(N, num_classes)`` out.
    """
    channels, height, width = input_shape
    if max(height, min_side) < 15 or max(width, min_side) < 15:
        raise ValueError(
            f"the CNN's three max-pools need inputs of at least 15x15, got "
            f"{height}x{width} with min_side={min_side}"
        )
    mods: list[nn.Module] = []
    if height < min_side or width < min_side:
        mods.append(
            nn.Upsample(
                size=(max(height, min_side), max(width, min_side)),
                mode="bilinear",
                align_corners=False,
            )
        )
        height, width = max(height, min_side), max(width, min_side)
    if input_dropout > 0:
        mods.append(nn.Dropout(input_dropout))
    for c_in, c_out in ((channels, 32), (32, 64), (64, 64)):
        mods += _block(
            nn.Conv2d(c_in, c_out, 5, padding=2), act, conv_dropout, batch_norm, c_out, conv=True
        )
        mods.append(nn.MaxPool2d(3, 2))
        height, width = (height - 3) // 2 + 1, (width - 3) // 2 + 1
    mods.append(nn.Flatten())
    mods += _block(nn.Linear(64 * height * width, 128), act, dropout, batch_norm, 128, conv=False)
    mods.append(nn.Linear(128, num_classes))
    return nn.Sequential(*mods)


class InputGradMask(nn.Module):
    """The 2019 code's bottleneck input-gradient mask: an identity whose backward multiplies the
    gradient by a fixed random 0/1 mask ``(batch, features)``, by batch position and unit, each
    entry kept with probability ``keep`` (docs/deviations-bottleneck.md). Not a DFA feature: it
    reproduces an old network, in every backward pass (the 2019 BP reference had it too).

    The 2019 code drew the mask once, with the shape of the gradient at the first batch; a batch
    of ``n <= batch`` rows uses its first ``n`` rows, a larger one (an alignment batch bigger than
    the training batch) the rows repeated. The mask is a buffer drawn from a ``torch.Generator``
    seeded by ``seed``, so a reloaded checkpoint has the same one.

    Shape: ``(N, features)`` in, the same out.
    """

    def __init__(self, batch: int, features: int, keep: float, seed: int = 0) -> None:
        if batch < 1 or features < 1 or not 0.0 <= keep <= 1.0:
            raise ValueError(
                f"InputGradMask needs batch, features >= 1 and keep in [0, 1], "
                f"got {batch}, {features}, {keep}"
            )
        super().__init__()
        self.keep = keep
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mask", torch.rand(batch, features, generator=gen) < keep)

    def rows(self, n: int) -> torch.Tensor:
        """The mask rows ``(n, features)`` that a batch of ``n`` gets."""
        batch = self.mask.shape[0]
        mask = self.mask if n <= batch else self.mask.repeat(math.ceil(n / batch), 1)
        return mask[:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.mask.shape[1]:
            raise ValueError(
                f"InputGradMask expects (N, {self.mask.shape[1]}) inputs, got {tuple(x.shape)}"
            )
        if not (torch.is_grad_enabled() and x.requires_grad):
            return x
        # Values are x everywhere; gradient flows only through the kept entries.
        return torch.where(self.rows(x.shape[0]), x, x.detach())

    def extra_repr(self) -> str:
        batch, features = self.mask.shape
        return f"batch={batch}, features={features}, keep={self.keep:.4g}, seed={self.seed}"


def bottleneck_net(
    input_shape: tuple[int, ...],
    num_classes: int,
    size: int,
    mode: str = "mask",
    width: int = FULL_WIDTH,
    seed: int = 0,
    input_mask_batch: int | None = None,
) -> nn.Sequential:
    """Flatten, Linear(in, W), tanh, <bottleneck>, tanh, Linear(W, W), tanh, Linear(W, K).

    ``mode="mask"``: the bottleneck is ``dfatools.Bottleneck(W, W, size)``, a full-width layer
    with a fraction ``size / W`` of trainable entries. ``mode="width"``: a genuinely narrow layer,
    Linear(W, size), tanh, Linear(size, W), so one hidden layer has ``size`` units.
    ``input_mask_batch`` (mask mode only): put the 2019 code's :class:`InputGradMask`
    ``(input_mask_batch, W)``, keep ``size / W``, right before the bottleneck layer.
    """
    if not 1 <= size <= width:
        raise ValueError(f"bottleneck size must be in 1..{width} (the width), got {size}")
    if mode == "mask":
        neck: list[nn.Module] = [dfatools.Bottleneck(width, width, size, seed=seed)]
    elif mode == "width":
        neck = [nn.Linear(width, size), nn.Tanh(), nn.Linear(size, width)]
    else:
        raise ValueError(f"unknown bottleneck mode {mode!r}; choose from ('mask', 'width')")
    if input_mask_batch is not None:
        if mode != "mask":
            raise ValueError("the 2019 input-gradient mask belongs to the mask-mode bottleneck")
        seed_mask = seed + INPUT_MASK_SEED_OFFSET
        neck.insert(0, InputGradMask(input_mask_batch, width, size / width, seed=seed_mask))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.Tanh(),
        *neck,
        nn.Tanh(),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, num_classes),
    )


def _weight_indices(net: nn.Sequential, exact: bool = False) -> list[int]:
    """Positions of the weight layers in ``net``; ``exact``: only modules whose type is exactly
    ``nn.Linear`` or ``nn.Conv2d`` (the 2019 converter's test), so no Bottleneck."""
    if exact:
        return [i for i, m in enumerate(net) if type(m) in (nn.Linear, nn.Conv2d)]
    return [i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d))]


def points_2019(net: nn.Sequential) -> list[str]:
    """``to_dfa``'s ``points`` for the 2019 code's placement in the flat ``net``: the output of
    the module before every exact ``nn.Linear``/``nn.Conv2d`` but the first. Its converter
    tested the type exactly, so the Bottleneck (an ``nn.Linear`` subclass) got no point before
    it: in the bottleneck net the points are after the bottleneck's and the third layer's tanh.
    """
    return [str(i - 1) for i in _weight_indices(net, exact=True)[1:]]


def point_blocks(net: nn.Sequential, points: Sequence[str] | None) -> list[int]:
    """The hidden block (0-based; block b outputs h_{b+1}, b+1 weight layers from the input)
    that each feedback point of the flat ``net`` reads: ``points`` names modules as
    :func:`points_2019` does; None is ``to_dfa``'s default, a point before every weight layer
    but the first. Reports use it to line up networks whose points differ."""
    weights = _weight_indices(net)
    if points is None:
        return list(range(len(weights) - 1))
    return [sum(i <= int(p) for i in weights) - 1 for p in points]


# -- models that are not a chain of layers (DESIGN.md 9): trained through to_dfa(points=...) ------
def resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    widths: tuple[int, ...] = (8, 16, 32),
    blocks: int = 1,
) -> nn.Module:
    """A small CIFAR-style ResNet of torchvision ``BasicBlock``s: conv 3x3 stem, one stage per
    width (``blocks`` blocks each, stride 2 from the second stage on), global average pool,
    Linear(widths[-1], K). Feedback points go at every ``BasicBlock`` (:func:`build_resnet`).

    Shape: ``(N, C, H, W)`` in, ``(N, num_classes)`` out.
    """
    from torchvision.models.resnet import BasicBlock

    channels = input_shape[0]
    stem = [
        nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    stages, c_in = [], widths[0]
    for i, c_out in enumerate(widths):
        for b in range(blocks):
            stride = 2 if i > 0 and b == 0 else 1
            down = None
            if stride != 1 or c_in != c_out:
                down = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            stages.append(BasicBlock(c_in, c_out, stride=stride, downsample=down))
            c_in = c_out
    return nn.Sequential(
        *stem,
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c_in, num_classes),
    )


# NORMS, the Transformer block layouts (DESIGN.md 14). pre: x + f(LN(x)) per sublayer and a
# final LayerNorm before the head (GPT-2's). post: LN(x + f(x)) per sublayer and no final
# LayerNorm (the original Transformer's, and Launay et al. 2020's DFA Transformers').


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown block layout norm={norm!r}; choose from {NORMS}")


def _final_norm(d_model: int, norm: str) -> nn.Module:
    """The LayerNorm before the head (pre), or an identity in its place (post): the head's
    input is then still the output of a submodule named ``norm``, the ``hidden`` error site."""
    return nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()


class RowTransformer(nn.Module):
    """A Transformer encoder that reads an image as a sequence of its rows: each row of
    ``C * W`` pixels is a token, embedded by a Linear layer, plus a learned position;
    ``layers`` ``nn.TransformerEncoderLayer`` blocks (GELU; ``norm``: pre- or post-norm,
    :data:`NORMS`); the tokens' mean goes through ``norm`` (a LayerNorm when pre-norm, an
    identity when post-norm) and Linear(d, K). Feedback points go at every encoder layer; the
    output of ``norm`` is the head's input (the ``hidden`` error site).

    Shape: ``(N, C, H, W)`` in, ``(N, num_classes)`` out.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        d_model: int = 32,
        layers: int = 2,
        heads: int = 4,
        norm: str = "pre",
    ) -> None:
        super().__init__()
        _check_norm(norm)
        channels, height, width = input_shape
        self.embed = nn.Linear(channels * width, d_model)
        self.pos = nn.Parameter(torch.zeros(height, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            4 * d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=norm == "pre",
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = _final_norm(d_model, norm)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C * W): one token per row
        h = self.encoder(self.embed(rows) + self.pos)
        return self.head(self.norm(h.mean(1)))


class Block(nn.Module):
    """A causal Transformer block, GELU MLP 4x wide. ``norm="pre"``: ``x + attn(LN1(x))``, then
    ``x + mlp(LN2(x))``; ``norm="post"``: ``LN1(x + attn(x))``, then ``LN2(x + mlp(x))``.

    Shape: ``(N, T, d)`` in and out.
    """

    def __init__(self, d_model: int, heads: int, norm: str = "pre") -> None:
        super().__init__()
        _check_norm(norm)
        self.post = norm == "post"
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def _attend(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.post:
            x = self.norm1(x + self._attend(x, mask))
            return self.norm2(x + self.mlp(x))
        x = x + self._attend(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"norm={'post' if self.post else 'pre'!r}"


class CharGPT(nn.Module):
    """A small GPT-style character language model: token embedding plus learned positions,
    ``layers`` causal :class:`Block` s (``norm``: pre- or post-norm, :data:`NORMS`), then
    ``norm`` (a LayerNorm when pre-norm, an identity when post-norm) and a Linear head. The
    output of ``norm`` is the head's input (the ``hidden`` error site).

    Shape: ``(N, T)`` character indices in (``T <= context``), ``(N, T, vocab)`` logits out.
    """

    def __init__(
        self, vocab: int, context: int, d_model: int = 128, layers: int = 4, norm: str = "pre"
    ) -> None:
        super().__init__()
        _check_norm(norm)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            Block(d_model, max(1, d_model // 32), norm) for _ in range(layers)
        )
        self.norm = _final_norm(d_model, norm)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:length]
        mask = self.mask[:length, :length]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


# The qualified name of the head's input in both Transformers: error_at="hidden" (DESIGN.md 14).
HIDDEN_SITE = "norm"
RESIDUAL_BLOCKS = (Block, nn.TransformerEncoderLayer)


def lm_points(net: CharGPT, mode: str) -> list:
    """``macro``: a feedback point at every block's output. ``micro``: inside every block, at
    each sublayer's output: pre-norm, after the attention and after the MLP (their residual
    branches); post-norm, after each LayerNorm and after the MLP's hidden activation (where
    Launay et al. 2020 put them)."""
    if mode == "macro":
        return [Block]
    if mode == "micro":
        post = net.blocks[0].post if len(net.blocks) else False
        parts = ("norm1", "mlp.1", "norm2") if post else ("attn", "mlp")
        return [f"blocks.{i}.{part}" for i in range(len(net.blocks)) for part in parts]
    raise ValueError(f"unknown lm_points {mode!r}; choose from {LM_POINTS}")


def error_site(net: nn.Module, site: str) -> dict:
    """The ``to_dfa`` keywords of an error site: ``logits``, the model's output (none), or
    ``hidden``, the head's input, the output of ``net.norm`` (``error_at``, and the width of
    the tensor there as ``num_classes``)."""
    if site == "logits":
        return {}
    if site == "hidden":
        head = getattr(net, "head", None)
        if not isinstance(head, nn.Linear) or not hasattr(net, HIDDEN_SITE):
            raise ValueError(
                f"error_at='hidden' needs a Transformer with a norm and a head, not a "
                f"{type(net).__name__}"
            )
        return {"error_at": HIDDEN_SITE, "num_classes": head.in_features}
    raise ValueError(f"unknown error site {site!r}; choose from {ERROR_SITES}")


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of ``model`` in forward order (empty for other networks): the
    residual stream is read at their outputs (``stream_norm``, DESIGN.md 14)."""
    return [m for m in model.modules() if isinstance(m, RESIDUAL_BLOCKS)]


# -- the builders of mltools.models.architectures' registry ----------------------------------------
Built = tuple[nn.Module, dict]  # the network, and the to_dfa keywords that place its feedback


def build(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> Built:
    """The plain network of ``cfg.arch`` with its options ``cfg.model``, and the ``to_dfa``
    keywords that place its feedback (:class:`mltools.models.architectures.Architecture`).
    ValueError for options it cannot build."""
    cfg.model.check()
    return globals()[architectures.get(cfg.arch).builder](cfg.model, input_shape, num_classes, cfg)


def build_fc(o: FCOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig) -> Built:
    net = fc(
        input_shape,
        num_classes,
        act=o.act,
        input_dropout=o.input_dropout,
        dropout=o.dropout,
        batch_norm=o.batch_norm,
    )
    return net, {}


def build_cnn(
    o: CNNOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig
) -> Built:
    net = cnn(
        input_shape,
        num_classes,
        act=o.act,
        input_dropout=o.input_dropout,
        conv_dropout=o.conv_dropout,
        dropout=o.dropout,
        batch_norm=o.batch_norm,
        min_side=o.min_side,
    )
    # The 2019 code's placement: no point before the output layer (docs/deviations.md).
    return net, {"exact_top": 2 if o.points == "2019" else 1}


def build_bottleneck(
    o: BottleneckOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig
) -> Built:
    assert o.size is not None  # BottleneckOptions.check
    net = bottleneck_net(
        input_shape,
        num_classes,
        o.size,
        mode=o.mode,
        width=o.width,
        seed=cfg.seed,
        # The 2019 mask has the input gradient's shape at the first (full) batch.
        input_mask_batch=cfg.batch_size if o.points == "2019" else None,
    )
    return net, ({"points": points_2019(net)} if o.points != "all" else {})


def build_resnet(
    o: ResNetOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig
) -> Built:
    from torchvision.models.resnet import BasicBlock

    return resnet(input_shape, num_classes), {"points": [BasicBlock]}


def build_transformer(
    o: TransformerOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig
) -> Built:
    net = RowTransformer(input_shape, num_classes, norm=o.norm)
    return net, {"points": [nn.TransformerEncoderLayer], **error_site(net, o.error_at)}


def build_gpt(
    o: GPTOptions, input_shape: tuple[int, ...], num_classes: int, cfg: RunConfig
) -> Built:
    """``input_shape`` is ``(T,)``: the data's window length is the model's context."""
    net = CharGPT(num_classes, input_shape[0], o.width, o.depth, o.norm)
    return net, {"points": lm_points(net, o.points), **error_site(net, o.error_at)}
