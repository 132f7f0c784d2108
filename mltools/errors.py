"""The errors a command turns into one line and an exit code (:func:`mltools.cli.run_main`):
bad input (:class:`UsageError`, exit 2) and a disk that cannot take our files (:class:`DiskFull`,
exit 1), with the two helpers that raise them for output folders and reports.

Imported by the reports, the sweeps, the legacy readers and the commands; it imports nothing of
ours (and no torch).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


class UsageError(Exception):
    """Bad input; the message is printed as one line and the command exits with code 2."""


class DiskFull(Exception):
    """Files could not be written for a reason of the disk, not of the work (full, over quota,
    file too large, read-only, I/O error): every later write would fail too, so the command
    stops. The message is one line naming the path and what to do; the exit code is 1."""


# Errors about the disk rather than the run, and what to do about each.
DISK_HINTS = {
    errno.ENOSPC: "Free space on that disk",
    errno.EDQUOT: "Free space within your quota",
    errno.EFBIG: "Raise the file-size limit (ulimit -f)",
    errno.EROFS: "Make that file system writable",
    errno.EIO: "Check that disk",
}
DISK_ERRNOS = frozenset(DISK_HINTS)


def disk_full(err: BaseException, where: str | Path) -> DiskFull | None:
    """A DiskFull for ``err`` when it is about the disk, else None. ``where`` names the path
    when the error does not (a failed ``write`` carries no file name)."""
    if not isinstance(err, OSError) or err.errno not in DISK_ERRNOS:
        return None
    path = err.filename or where
    reason = err.strerror or os.strerror(err.errno)
    return DiskFull(
        f"cannot write {path}: {reason}. {DISK_HINTS[err.errno]} (or change --out), "
        "then run the same command again to resume: finished runs are skipped"
    )


def write_or_stop(write: Callable[[Path], object], out: Path) -> None:
    """``write(out)`` (a report), with an OSError about the disk turned into DiskFull."""
    try:
        write(out)
    except OSError as err:
        stop = disk_full(err, out)
        if stop is None:
            raise
        raise stop from None


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check we can write there; UsageError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {path} is not writable")
    return path
