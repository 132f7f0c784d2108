"""One run on several processes: data parallelism under ``torchrun`` (docs/paper-study.md).

``torchrun --nproc_per_node N script.py ...`` starts N copies of a script and tells each its
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Every copy lists the same runs and trains them in
the same order; each takes its slice of every batch, ``DistributedDataParallel`` averages the
gradients, and dfatools counts the positions of every rank in the DFA error, so a step is the
step of one process on the whole batch. Rank 0 alone writes the run folders and prints.

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is what one process does.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def world_size() -> int:
    """The number of processes torchrun started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this process writes the run folders and prints: rank 0."""
    return rank() == 0


def start(device: str) -> str:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) and return this rank's
    device: ``cuda:LOCAL_RANK`` when ``device`` is ``auto`` or ``cuda`` and CUDA is there, else
    ``device`` as given (``cuda:N`` too: each process takes its own). Without torchrun,
    ``device`` unchanged."""
    if not launched():
        return device
    cuda = (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available()
    if cuda:  # one device per process, whatever index was named
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    elif device == "auto":
        device = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def stop() -> None:
    """Leave the process group (every rank, at the end of the script)."""
    if launched() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def part(idx: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a batch's indices ``(B,)``: a contiguous ``B / world`` of them (the
    sizes differ by one at most when ``B`` does not divide)."""
    world, r = world_size(), rank()
    n = len(idx)
    return idx[r * n // world : (r + 1) * n // world]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place), ``t`` itself in one process."""
    if launched():
        torch.distributed.all_reduce(t)
    return t


def share(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable value, e.g. the list of runs to train)."""
    if not launched():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (rank 0 has written what the others read next)."""
    if launched():
        torch.distributed.barrier()
