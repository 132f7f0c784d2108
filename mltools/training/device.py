"""Choosing the training device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``; ``ValueError`` with a one-line reason if unusable."""
    if not DEVICE_PATTERN.match(name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise ValueError(
                f"device {name!r} does not exist: this machine has {count} CUDA "
                "device(s); use --device cpu or auto"
            )
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
