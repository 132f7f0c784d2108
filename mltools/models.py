"""The paper's architectures (DESIGN.md 4) as plain ``nn.Sequential`` networks.

``dfatools.to_dfa`` turns any of them into a DFA-trained model; BP runs use the same module in
backprop mode, so both methods train exactly the same architecture.
"""

from __future__ import annotations

import math

from torch import nn

import dfatools

ACTIVATIONS = ("tanh", "relu", "leaky0.5", "leaky0.1", "leaky0.01")
CNN_SIDE = 32  # the paper's CNN is laid out for 32x32 inputs


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
    width: int = 800,
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


def bottleneck_net(
    input_shape: tuple[int, ...],
    num_classes: int,
    size: int,
    mode: str = "mask",
    width: int = 800,
    seed: int = 0,
) -> nn.Sequential:
    """Flatten, Linear(in, W), tanh, <bottleneck>, tanh, Linear(W, W), tanh, Linear(W, K).

    ``mode="mask"``: the bottleneck is ``dfatools.Bottleneck(W, W, size)``, a full-width layer
    with a fraction ``size / W`` of trainable entries. ``mode="width"``: a genuinely narrow layer,
    Linear(W, size), tanh, Linear(size, W), so one hidden layer has ``size`` units.
    """
    if not 1 <= size <= width:
        raise ValueError(f"bottleneck size must be in 1..{width} (the width), got {size}")
    if mode == "mask":
        neck: list[nn.Module] = [dfatools.Bottleneck(width, width, size, seed=seed)]
    elif mode == "width":
        neck = [nn.Linear(width, size), nn.Tanh(), nn.Linear(size, width)]
    else:
        raise ValueError(f"unknown bottleneck mode {mode!r}; choose from ('mask', 'width')")
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
