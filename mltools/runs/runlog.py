"""Run folders on disk (DESIGN.md 6): the one module that writes and reads their formats.

A run folder holds

* ``config.json``: every setting plus ``status`` (running, done, diverged, failed);
* ``metrics.jsonl``: one JSON object per epoch (epoch 0 = before training);
* ``log.txt``: a human-readable log whose ``epoch`` lines carry every metric, so
  :func:`parse_log` can rebuild ``metrics.jsonl`` (written as ``metrics.recovered.jsonl``);
* ``checkpoint.pt``/``model.pt`` (written and read by :mod:`mltools.runs.checkpoint`);
* ``run.lock`` while a process trains it.

No torch here: reports and plots read run folders on machines without torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RECOVERED = "metrics.recovered.jsonl"
LOG = "log.txt"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
MODEL = "model.pt"
SAMPLES = "samples.txt"  # a language model's sampled text (mltools.training.train.sample_text)
LOCK = "run.lock"

FINISHED = ("done", "diverged")
EPOCH_FIELDS = ("train_loss", "train_top1", "eval_loss", "eval_top1", "time_s")
OPTIONAL_EPOCH_FIELDS = ("train_bpc", "eval_bpc")  # text runs only (DESIGN.md 13)
ALIGN_FIELDS = ("cos_mean", "cos_std", "angle_deg", "weight_cos")
OPTIONAL_ALIGN_FIELDS = ("undefined_frac",)  # absent from runs written before it existed


# -- writing --------------------------------------------------------------------------------------
def fsync_write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: temp file, fsync, rename. A crash leaves the old file or the
    new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A full disk fails mid-write: drop the partial temp file, which only takes space.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_config(run_dir: Path, config: dict) -> None:
    fsync_write(
        Path(run_dir) / CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    )


def _json_float(x: Any) -> Any:
    # JSON has no NaN/inf; a diverged epoch is written with null, never with invalid JSON.
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _clean(record: dict) -> dict:
    out = {k: _json_float(v) for k, v in record.items() if k != "alignment"}
    if "alignment" in record:
        out["alignment"] = [{k: _json_float(v) for k, v in a.items()} for a in record["alignment"]]
    return out


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one epoch record as a single line, flushed and fsynced."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(_clean(record), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_metrics(path: Path, records: Iterable[dict]) -> None:
    """Write a whole metrics file atomically (resume truncation, recovered metrics)."""
    lines = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in records)
    fsync_write(Path(path), lines.encode())


class RunLog:
    """Appends timestamped lines to ``log.txt`` (and mirrors them to ``echo`` when given);
    ``enabled=False``: writes nothing (the ranks of a data-parallel run other than 0)."""

    def __init__(self, run_dir: Path, echo=None, enabled: bool = True) -> None:
        self.path = Path(run_dir) / LOG
        self.echo = echo
        self.enabled = enabled

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
        if self.echo is not None:
            self.echo(line)

    def epoch(self, record: dict, epochs: int) -> None:
        """The epoch's metrics as ``key=value`` lines that :func:`parse_log` reads back exactly."""
        head = f"epoch {record['epoch']}/{epochs}"
        fields = EPOCH_FIELDS + tuple(k for k in OPTIONAL_EPOCH_FIELDS if k in record)
        values = " ".join(f"{k}={_fmt(record.get(k))}" for k in fields)
        self.write(f"{head} {values}")
        for a in record.get("alignment", []):
            values = " ".join(
                f"{k}={_fmt(a.get(k))}"
                for k in ALIGN_FIELDS + tuple(k for k in OPTIONAL_ALIGN_FIELDS if k in a)
            )
            self.write(f"{head} align point={a['point']} name={json.dumps(a['name'])} {values}")
        for block, norm in enumerate(record.get("stream_norm", [])):  # Transformers only
            self.write(f"{head} stream block={block} norm={_fmt(norm)}")


def _fmt(x: Any) -> str:
    # repr keeps every digit, so numbers rebuilt from the log equal the originals.
    return "null" if x is None else repr(float(x))


# -- reading --------------------------------------------------------------------------------------
def parse_json(text: str) -> Any:
    """``json.loads``, with a document nested too deeply for it (RecursionError) reported as the
    ValueError of any other malformed JSON, so that readers need to catch only that."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json_lines(path: Path) -> tuple[list[dict], list[str]]:
    """Records of a ``.jsonl`` file; a damaged line is skipped with a warning naming file and
    line."""
    records, warnings = [], []
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        return [], [f"{path}: cannot read ({err.strerror})"]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError:
            warnings.append(f"{path}:{number}: damaged line skipped")
            continue
        records.append(record)
    return records, warnings


def read_config(run_dir: Path) -> tuple[dict | None, list[str]]:
    """A run folder's config.json in today's layout, whichever version wrote it
    (:func:`mltools.runs.config.upgrade`: the options under ``model``), or None and the problem.
    :func:`mltools.runs.config.read` turns it into a RunConfig."""
    from mltools.runs.config import upgrade

    path = Path(run_dir) / CONFIG
    try:
        config = parse_json(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return upgrade(config), []
    except FileNotFoundError:
        return None, [f"{path}: missing"]
    except (OSError, ValueError) as err:
        return None, [f"{path}: unreadable ({err})"]


_EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+) (.*)$")
# A key starts a word: findall then tries one start per word, not one per character, which on
# a long run of letters would take quadratic time (the matches are the same).
_PAIR = re.compile(r'(?<!\w)(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
# RunLog's epoch lines take about 200 characters; longer ones are damaged, and matching the
# pairs of an unterminated quote on them would take quadratic time.
MAX_LINE_CHARS = 2000


def _value(raw: str) -> Any:
    if raw.startswith('"'):
        return json.loads(raw)
    if raw == "null":
        return None
    return int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)


def parse_log(text: str, source: str = LOG) -> tuple[list[dict], list[str]]:
    """Epoch records rebuilt from a ``log.txt``; the last occurrence of an epoch wins (resumes).

    Damaged lines are skipped with a warning naming the line.
    """
    epochs: dict[int, dict] = {}
    warnings = []
    for number, line in enumerate(text.splitlines(), 1):
        m = _EPOCH_LINE.search(line)
        if not m:
            continue
        if len(line) > MAX_LINE_CHARS:
            warnings.append(
                f"{source}:{number}: damaged epoch line skipped ({len(line)} characters)"
            )
            continue
        epoch, rest = int(m.group(1)), m.group(3)
        try:
            pairs = {k: _value(v) for k, v in _PAIR.findall(rest)}
        except ValueError:
            warnings.append(f"{source}:{number}: damaged epoch line skipped")
            continue
        if rest.startswith("align "):
            if epoch not in epochs or not all(k in pairs for k in ("point", "name", *ALIGN_FIELDS)):
                warnings.append(f"{source}:{number}: incomplete alignment line skipped")
                continue
            epochs[epoch]["alignment"].append(
                {
                    "point": pairs["point"],
                    "name": pairs["name"],
                    **{k: pairs[k] for k in ALIGN_FIELDS + OPTIONAL_ALIGN_FIELDS if k in pairs},
                }
            )
        elif rest.startswith("stream "):
            stream = epochs.get(epoch, {}).setdefault("stream_norm", [])
            if epoch not in epochs or pairs.get("block") != len(stream) or "norm" not in pairs:
                warnings.append(f"{source}:{number}: incomplete stream line skipped")
                continue
            stream.append(pairs["norm"])
        elif all(k in pairs for k in EPOCH_FIELDS):
            fields = EPOCH_FIELDS + tuple(k for k in OPTIONAL_EPOCH_FIELDS if k in pairs)
            epochs[epoch] = {"epoch": epoch, **{k: pairs[k] for k in fields}, "alignment": []}
        else:
            warnings.append(f"{source}:{number}: incomplete epoch line skipped")
    return [epochs[k] for k in sorted(epochs)], warnings


@dataclass
class Run:
    """A run folder as read back: its config, epoch records and any problems found."""

    path: Path
    config: dict | None
    records: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = METRICS  # which file the records came from

    @property
    def status(self) -> str:
        return (self.config or {}).get("status", "unknown")

    @property
    def last(self) -> dict | None:
        return self.records[-1] if self.records else None

    def at_epoch(self, epoch: int | None) -> dict | None:
        """The record of ``epoch`` (the last one when None)."""
        if epoch is None:
            return self.last
        return next((r for r in self.records if r["epoch"] == epoch), None)


def load_run(run_dir: Path) -> Run:
    """Read a run folder; ``metrics.recovered.jsonl`` stands in where metrics.jsonl is missing or
    damaged. Never raises for damaged files: problems become ``warnings``."""
    run_dir = Path(run_dir)
    config, warnings = read_config(run_dir)
    records, source = [], METRICS
    if (run_dir / METRICS).exists():
        records, bad = read_json_lines(run_dir / METRICS)
        warnings += bad
        if bad and (run_dir / RECOVERED).exists():
            records, source = [], RECOVERED
    if not records and (run_dir / RECOVERED).exists():
        records, bad = read_json_lines(run_dir / RECOVERED)
        warnings += bad
        source = RECOVERED
    return Run(run_dir, config, records, warnings, source)


# -- locks ----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run_dir: Path) -> bool:
    """Take ``run.lock`` (created exclusively), which names the holder's pid, host and SLURM job
    (``-`` outside SLURM). A lock left by a dead process on this host, or by this same SLURM job
    on another node (before it was requeued there), is taken over. False when another live
    process holds it."""
    path = Path(run_dir) / LOCK
    me = f"{os.getpid()} {socket.gethostname()} {os.environ.get('SLURM_JOB_ID', '-')}\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return False
            try:
                os.unlink(path)  # two takers race here; O_EXCL above picks one winner
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _stale(path: Path) -> bool:
    try:
        pid, host, *job = path.read_text().split()  # locks written before the job field: 2 fields
        here = host == socket.gethostname()
        mine = os.environ.get("SLURM_JOB_ID")
        if job and mine and job[0] == mine and not here:
            return True  # this job, requeued onto another node: its earlier self is gone
        return here and not _pid_alive(int(pid))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        # Half-written by a process killed between create and write: old enough means dead.
        try:
            return time.time() - path.stat().st_mtime > 10
        except FileNotFoundError:
            return True


def release_lock(run_dir: Path) -> None:
    try:
        os.unlink(Path(run_dir) / LOCK)
    except FileNotFoundError:
        pass
