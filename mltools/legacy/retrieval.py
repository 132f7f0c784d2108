"""Rebuild metrics from human-readable logs (behind log_retrieval.py).

* A run folder (or its ``log.txt``): :func:`mltools.runs.runlog.parse_log` rebuilds the epoch
  records, written as ``metrics.recovered.jsonl`` beside the log (each record with
  ``"recovered": true``); :func:`mltools.runs.runlog.load_run` reads that file when
  ``metrics.jsonl`` is missing or damaged.
* A 2019-code log: :func:`mltools.legacy.log_2019.parse_legacy_log` gives runs of epochs,
  written as JSON (a list of runs, each a list of epoch dicts) that bottleneck_from_log.py
  reads.

Damaged input gives warnings, never a crash. No torch.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from mltools.errors import UsageError
from mltools.legacy.log_2019 import UNRECOGNISED, is_legacy_log, parse_legacy_log
from mltools.runs.runlog import LOG, RECOVERED, fsync_write, parse_log, write_metrics

Echo = Callable[[str], None]
SHOWN = 3  # unrecognised lines printed in full without --verbose


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_text(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None


def parse_run_log(text: str, source: str) -> tuple[list[dict], list[str]]:
    """:func:`runlog.parse_log`, minus a last line without its newline.

    RunLog ends every line with one, so such a line was cut mid-write and a number in it may have
    lost digits (``45.67`` -> ``45.6``), which parse_log cannot tell.
    """
    warnings = []
    lines = text.splitlines(keepends=True)  # numbered as parse_log numbers them
    if lines and not text.endswith("\n"):
        if lines[-1].strip():
            warnings.append(
                f"{source}:{len(lines)}: last line is cut off (no line ending); ignored"
            )
        text = "".join(lines[:-1])
    records, more = parse_log(text, source)
    return records, more + warnings  # the cut line is the last one: still in line order


def recover_run(
    log_path: Path, out: Path | None = None
) -> tuple[Path | None, list[dict], list[str]]:
    """Records of one of our ``log.txt`` files, written to ``out`` (default: metrics.recovered.jsonl
    beside the log). Nothing is written when no epoch was found. Returns (written path, records,
    warnings)."""
    log_path = Path(log_path)
    records, warnings = parse_run_log(read_text(log_path), str(log_path))
    if not records:
        return None, records, warnings
    dest = Path(out) if out is not None else log_path.parent / RECOVERED
    _write(dest, lambda: write_metrics(dest, [{**r, "recovered": True} for r in records]))
    return dest, records, warnings


def _finite(x: Any) -> Any:
    # JSON has no NaN: a nan in a 2019 log ('mean:nan') is written as null.
    return None if isinstance(x, float) and not math.isfinite(x) else x


def recover_legacy(
    path: Path, out: Path | None = None
) -> tuple[Path | None, list[list[dict]], list[str]]:
    """Runs of a 2019-code log as epoch dicts, written as JSON to ``out`` (default
    ``<file>.recovered.json``); nothing is written when no epoch was found."""
    path = Path(path)
    runs, warnings = parse_legacy_log(read_text(path), str(path))
    data = [
        [
            {
                k: (
                    [{mk: _finite(mv) for mk, mv in m.items()} for m in v]
                    if k == "modules"
                    else _finite(v)
                )
                for k, v in e.to_dict().items()
            }
            for e in run
        ]
        for run in runs
    ]
    if not data:
        return None, data, warnings
    dest = Path(out) if out is not None else path.with_name(path.name + ".recovered.json")
    # One epoch per line: readable and diff-friendly, still plain JSON.
    text = (
        "[\n"
        + ",\n".join(
            " [\n" + ",\n".join("  " + json.dumps(e) for e in run) + "\n ]" for run in data
        )
        + "\n]\n"
    )
    _write(dest, lambda: fsync_write(dest, text.encode()))
    return dest, data, warnings


def _write(dest: Path, write) -> None:
    try:
        write()
    except OSError as err:
        raise UsageError(f"cannot write {dest}: {err.strerror}") from None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _epochs(records: Sequence[dict]) -> str:
    return (
        f"{len(records)} epochs ({records[0]['epoch']}..{records[-1]['epoch']})"
        if records
        else "0 epochs"
    )


def show_warnings(warnings: Sequence[str], source: Path, verbose: bool, warn: Echo) -> None:
    """Every warning about damaged or incomplete records; unrecognised lines in full only with
    ``verbose``, otherwise the first few (with their line numbers) and a count: a long log with
    many odd lines must not bury the summary."""
    unknown = [w for w in warnings if UNRECOGNISED in w]
    hidden = set() if verbose else set(unknown[SHOWN:])
    for w in warnings:  # in line order
        if w not in hidden:
            warn(f"warning: {w}")
    if hidden:
        warn(
            f"warning: {source}: {len(unknown)} unrecognised lines in all, {len(hidden)} not "
            "shown (--verbose lists them)"
        )


def retrieve(
    paths: Sequence[Path],
    out: Path | None = None,
    echo: Echo = print,
    warn: Echo = _stderr,
    verbose: bool = False,
) -> int:
    """Recover every path (run folder, our log.txt, or a 2019 log); return the exit code:
    0 when each gave at least one epoch, 1 otherwise. Bad paths raise UsageError first.
    Warnings are summarised unless ``verbose`` (see :func:`show_warnings`)."""
    paths = [Path(p) for p in paths]
    if out is not None and len(paths) > 1:
        raise UsageError("-o/--out takes a single PATH")
    for p in paths:  # check them all before writing anything
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        if p.is_dir() and not (p / LOG).is_file():
            raise UsageError(f"{p}: a folder without {LOG}; give a run folder or a log file")
    code = 0
    for p in paths:
        log = p / LOG if p.is_dir() else p
        text = read_text(log)
        if is_legacy_log(text):
            dest, runs, warnings = recover_legacy(log, out)
            show_warnings(warnings, log, verbose, warn)
            where = f" -> {dest}" if dest else "; nothing written"
            echo(f"{log}: 2019-format log, {len(runs)} run(s){where}")
            for i, run in enumerate(runs, 1):
                last = run[-1]
                echo(
                    f"  run {i}: {_epochs(run)}, last train top-1 {_pct(last['train_top1'])}, "
                    f"test top-1 {_pct(last['test_top1'])}"
                )
        else:
            dest, runs, warnings = recover_run(log, out)
            show_warnings(warnings, log, verbose, warn)
            if dest is None:
                echo(f"{log}: no epoch lines found; nothing written ({len(warnings)} warnings)")
            else:
                echo(
                    f"{dest}: {_epochs(runs)} recovered, last eval top-1 "
                    f"{_pct(runs[-1].get('eval_top1'))}, {len(warnings)} warnings"
                )
        if dest is None:
            code = 1
    return code
