"""Stopping cleanly: SIGTERM and SIGHUP stop a command as Ctrl-C does, and a sweep's worker
processes stop with their parent, however it ends (docs/stopping.md).

A stop signal raises :class:`Stopped`, a ``KeyboardInterrupt``, wherever the program is: every
clean-up written for Ctrl-C (a run's log line and lock, a sweep's workers) then runs for these
too. No torch here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

# getattr: Windows has neither; there SIGTERM alone stops.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
# Signals a worker leaves to its parent: the terminal sends Ctrl-C to the whole process group,
# and SLURM may send submitit's pre-emption signal (SIGUSR2) to every process of the job step.
# The parent decides, then stops its workers.
PARENTS_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGUSR2") if hasattr(signal, name)
)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_stopping = False  # a stop signal arrived: later ones must not break the clean-up under way


class Stopped(KeyboardInterrupt):
    """A stop signal (``signum``) arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(err, "signum", signal.SIGINT)


def stop(signum: int, frame=None) -> None:
    """Raise Stopped the first time; a later stop finds the process stopping and is ignored, so
    that a second SIGTERM (``timeout``, systemd, a scheduler repeat theirs) cannot cut the
    clean-up short. SIGKILL still ends it at once."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise Stopped(signum)


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGHUP raise Stopped (once) in this process's main thread,
    unless the process started with them ignored: ``nohup`` ignores SIGHUP so that a sweep
    outlives its terminal, and that choice is inherited by workers (exec keeps it)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop)


def ignore_stops() -> None:
    """A process whose work is over: a stop signal now has nothing left to stop."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C and the stop signals in this thread while it starts a worker: the worker
    starts with them held too (a signal mask survives exec), so that one arriving while it
    imports torch waits until :func:`follow_parent` has set up its handlers, instead of killing
    it with a traceback. Held signals of this process are delivered on leaving."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *STOP_SIGNALS})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def follow_parent(parent: int) -> None:
    """In a worker started under :func:`held` by process ``parent``: stop on SIGTERM and SIGHUP
    (from the parent, or sent to the whole group), leave Ctrl-C and SIGUSR2 to the parent, and
    receive SIGTERM when the parent dies, on Linux (prctl PR_SET_PDEATHSIG: the kernel sends
    it, no polling). Then release the held signals; raises Stopped if one was waiting."""
    for signum in PARENTS_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    stop_on_signals()
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, *STOP_SIGNALS})
    # The parent may have died before prctl: no signal will come, and this process now has
    # another parent (init or a subreaper). Stop as the signal would have made it.
    if os.getppid() != parent:
        stop(signal.SIGTERM)
