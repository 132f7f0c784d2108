"""Checkpoints and final weights: written atomically, read without running code.

A checkpoint holds the model, the optimizer, the learning-rate schedule, the data-order
generator and every RNG state, so a resumed run gives the same metrics as an uninterrupted one.
It is read with ``torch.load(weights_only=True)``, which builds only tensors, plain containers,
strings and numbers: a ``checkpoint.pt`` planted in a shared results folder cannot run code on
the next resume. numpy's and Python's RNG states are tuples (numpy's holds an array), so they
are stored as plain dicts and converted back exactly.

Checkpoints written before this format hold those tuples and load only with pickle, which runs
whatever code the file asks for. They are refused with one line that says how to proceed, unless
the user trusts them explicitly (``--trust-checkpoints``).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from mltools.runs import runlog

TRUST_FLAG = "--trust-checkpoints"


class UnsafeCheckpoint(Exception):
    """A checkpoint that loads only with pickle; the message is one line saying how to proceed."""


class IncompatibleCheckpoint(Exception):
    """A checkpoint whose model state does not fit the model this code builds; one line."""


# -- RNG states as plain types --------------------------------------------------------------------
def numpy_rng_to_plain(state: tuple) -> dict:
    """``np.random.get_state()`` as types the safe loader accepts (the 624 keys as a tensor)."""
    name, keys, pos, has_gauss, cached_gaussian = state
    # int64 holds every uint32 key exactly; torch has no uint32 tensors to serialize everywhere.
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def numpy_rng_from_plain(plain: dict) -> tuple:
    """The tuple ``np.random.set_state`` takes, from :func:`numpy_rng_to_plain`."""
    keys = plain["keys"].cpu().numpy().astype(np.uint32)
    return plain["name"], keys, plain["pos"], plain["has_gauss"], plain["cached_gaussian"]


def python_rng_to_plain(state: tuple) -> dict:
    """``random.getstate()`` (version, 625 ints, gauss_next) as a dict of plain types."""
    version, internal, gauss_next = state
    return {
        "version": int(version),
        "internal": [int(x) for x in internal],
        "gauss_next": gauss_next,
    }


def python_rng_from_plain(plain: dict) -> tuple:
    """The tuple ``random.setstate`` takes, from :func:`python_rng_to_plain`."""
    return plain["version"], tuple(plain["internal"]), plain["gauss_next"]


# -- writing --------------------------------------------------------------------------------------
def write_torch(path: Path, obj: object) -> None:
    """``torch.save`` through :func:`runlog.fsync_write`: atomic, and a failed write (full disk)
    raises the OSError itself rather than torch's RuntimeError, leaving the old file intact."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    runlog.fsync_write(path, buffer.getvalue())


def save_checkpoint(
    run_dir: Path,
    model,
    opt,
    sched,
    order: torch.Generator,
    epoch: int,
    device: torch.device,
    plateau=None,
) -> None:
    """Atomic, and the previous checkpoint is kept until the new one is in place.

    The CUDA RNG state saved is the run's own device's: a run draws from no other, and a
    checkpoint holding every device's state could not be restored where fewer devices exist.
    """
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        # The per-epoch ReduceLROnPlateau of a recipe with plateau (mltools.runs.recipes), or None.
        "plateau": plateau.state_dict() if plateau is not None else None,
        "order": order.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": numpy_rng_to_plain(np.random.get_state()),
        "random": python_rng_to_plain(random.getstate()),
    }
    path = run_dir / runlog.CHECKPOINT
    if path.exists():
        os.replace(path, run_dir / runlog.PREVIOUS_CHECKPOINT)
    write_torch(path, state)


# -- reading --------------------------------------------------------------------------------------
def unsafe_globals(path: Path) -> list[str]:
    """The globals beyond the safe loader's that the pickle in ``path`` asks for; [] when there
    are none or the file is not a readable checkpoint (then it is damaged, not unsafe)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a truncated or foreign file raises many types; it holds nothing to trust
        return []


def refusal(path: Path, found: list[str]) -> str:
    """The one line that refuses an unsafe checkpoint and says how to proceed."""
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    return (
        f"{path} loads only with pickle, which can run code (it asks for {shown}): written by "
        f"an older version, or planted. Delete it and {runlog.PREVIOUS_CHECKPOINT} to restart "
        f"this run from scratch, or pass {TRUST_FLAG} to load it if you trust it"
    )


def upgraded(state: dict) -> dict:
    """An old checkpoint's RNG tuples in today's plain form, so one ``restore`` serves both."""
    if isinstance(state.get("numpy"), tuple):
        state["numpy"] = numpy_rng_to_plain(state["numpy"])
    if isinstance(state.get("random"), tuple):
        state["random"] = python_rng_to_plain(state["random"])
    return state


def read_checkpoint(path: Path, device: torch.device, trust: bool = False) -> tuple[dict, bool]:
    """One checkpoint file and whether it was loaded with pickle (an old one, with ``trust``).

    Raises UnsafeCheckpoint for an old or planted file without ``trust``; any other exception
    means the file is damaged.
    """
    unsafe = False
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:
        found = unsafe_globals(path)
        if not found:
            raise  # truncated, empty or garbled: damaged
        if not trust:
            raise UnsafeCheckpoint(refusal(path, found)) from None
        state, unsafe = torch.load(path, map_location=device, weights_only=False), True
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a checkpoint")
    return (upgraded(state) if unsafe else state), unsafe


def load_checkpoint(
    run_dir: Path, device: torch.device, log: runlog.RunLog, trust: bool = False
) -> dict | None:
    """The newest readable checkpoint, or None; damaged ones are reported in the log and the
    previous one is tried. An unsafe one is refused (UnsafeCheckpoint), never skipped: falling
    back would silently lose its epochs, and the user has to decide."""
    for name in (runlog.CHECKPOINT, runlog.PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state, unsafe = read_checkpoint(path, device, trust)
        except UnsafeCheckpoint as err:
            log.write(f"refused: {err}")
            raise
        except Exception as err:  # truncated/empty files raise many different types
            log.write(f"warning: {path} is damaged ({type(err).__name__}); trying an older state")
            continue
        if unsafe:
            log.write(
                f"warning: {path} was loaded with pickle ({TRUST_FLAG}); the next "
                "checkpoint is written in the safe format"
            )
        return state
    return None


def saved_cuda_rng(state: dict, device: torch.device) -> torch.Tensor | None:
    """The CUDA RNG state to restore on ``device``, or None (a CPU run, or one written on the CPU).

    Older checkpoints held a list with every device's state: the run's device's entry is taken.
    """
    saved = state.get("cuda")
    if device.type != "cuda" or saved is None:
        return None
    if isinstance(saved, (list, tuple)):
        index = device.index or 0
        return saved[index] if index < len(saved) else None
    return saved


REWRITE = (
    "it was written by another version of the model or of dfatools (brsf before dfatools 0.4.0 "
    "kept no feedback_magnitude) and cannot resume here; train the run again in another --out "
    "folder"
)


def state_mismatch(missing: list[str], unexpected: list[str]) -> str | None:
    """None when a model took a checkpoint's state with no key ``missing`` and none
    ``unexpected`` (``load_state_dict(strict=False)``'s lists), else one line naming a key and
    what to do."""
    if not missing and not unexpected:
        return None
    what = f"lacks {missing[0]}" if missing else f"holds {unexpected[0]}, which the model has not"
    more = len(missing) + len(unexpected) - 1
    return f"the checkpoint {what}{f' (and {more} more)' if more else ''}: {REWRITE}"


def restore(
    state: dict,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    order: torch.Generator,
    device: torch.device,
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None,
) -> None:
    """Put a checkpoint's model, optimizer, schedule (and ``plateau``'s), data order and RNG
    states back in place.

    A checkpoint written before schedules existed has none: its run had a constant rate, which
    the new schedule object already holds. IncompatibleCheckpoint (one line) when the model's
    state does not fit; the model is then partly overwritten: build it again."""
    try:  # not strict: the lists of keys that differ, rather than an error listing them
        keys = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as err:  # tensors of other shapes: its first reason, on one line
        reasons = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise IncompatibleCheckpoint(
            f"the checkpoint's {reasons[0] if reasons else err}: {REWRITE}"
        ) from None
    mismatch = state_mismatch(keys.missing_keys, keys.unexpected_keys)
    if mismatch is not None:
        raise IncompatibleCheckpoint(mismatch)
    opt.load_state_dict(state["optimizer"])
    if "scheduler" in state:
        sched.load_state_dict(state["scheduler"])
    if plateau is not None and state.get("plateau") is not None:
        plateau.load_state_dict(state["plateau"])
    # RNG states must be CPU ByteTensors, whatever map_location moved them to.
    order.set_state(state["order"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    cuda_rng = saved_cuda_rng(state, device)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng.cpu(), device)
    np.random.set_state(numpy_rng_from_plain(state["numpy"]))
    random.setstate(python_rng_from_plain(state["random"]))
