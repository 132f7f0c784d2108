"""Parser for the text logs written by the 2019 DFA code (Launay et al. 2019).

``log_retrieval.py`` uses it to recover per-epoch metrics when a results file
got corrupted and only the console log survived.  Standard library only: no
torch, nothing from the rest of ``mltools`` or ``dfatools``.

Log format, one block per epoch::

    EPOCH 3/50, last epoch processed in 12.3s:
    0_Linear(in_features=3072, out_features=800, bias=True) -- mean:0.0018, std:0.0427
    1_Tanh() -- mean:0.4657, std:0.0679
    Training loss: 1.2345 (top-1:45.67%) -- Validation loss: 1.3456 (top-1:44.00%).

Module lines hold the alignment statistics (mean, std) of each module.  Any
line may start with a timestamp (``2019-05-03 14:02:11,123 -- ``) or a tag
(``[DMOD] INFO. ``), carry ANSI colour codes, or be a carriage-return progress
line of which only the text after the last ``\\r`` counts.  Several runs may
follow one another in one file; a run ends when the epoch counter goes back
(``k <= previous k``) or the total ``n`` changes.

The parser never raises on damaged input: unusable lines are skipped, numbers
that do not parse are left as ``None``, and each problem becomes a warning
``'<source>:<line>: <problem>'`` with the 1-based line number.  Choices:

* the 2019 code's progress lines (``Batch 17/390 (loaded in 0.0126s, ...)``)
  and set-up and saving messages are known and always silent;
* other free text is silent in the preamble and between epochs, and warned
  about (``unrecognised line``) only inside an epoch block (header seen, loss
  line not yet), or when it holds binary junk or record keywords (a damaged
  record);
* a last line without a line ending may be cut: an EPOCH or module line there
  is dropped (its final number may have lost digits), and a loss line keeps
  only the numbers followed by their delimiter;
* an epoch with no loss line, or fewer module lines than the most its run
  has, is kept with ``None`` fields and a warning at its EPOCH line;
* a line of more than ``MAX_RECORD_CHARS`` visible characters is never a
  record (a runaway print, binary junk) and is treated as free text, so that
  parsing stays linear in the size of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LegacyEpoch", "UNRECOGNISED", "is_legacy_log", "parse_legacy_log"]

# --- patterns (compiled once) ----------------------------------------------

# CSI sequences (colours, cursor moves), OSC sequences and two-byte escapes.
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Control characters (tab excepted) and the decoder's replacement character:
# they only appear in a text log when the file itself is damaged.
_JUNK_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")

# `EPOCH k/n`; upper case on purpose, our own log.txt writes `epoch` in lower case.
_EPOCH_RE = re.compile(r"\bEPOCH\s+(\d+)(?:\s*/\s*(\d+))?")
_EPOCH_LINE_RE = re.compile(r"^.*\bEPOCH\s+\d+\s*/\s*\d+", re.MULTILINE)
_TRAINING_LOSS_RE = re.compile(r"Training loss:")

# Epoch duration after the header: `12.3s`, `850 ms`, `2.5 min`, `0:01:02.5`.
_TIME_UNIT_RE = re.compile(
    r"(?<![\w.])(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b"
)
_TIME_CLOCK_RE = re.compile(r"(?<![\w.:])(\d+):(\d{2}):(\d{2}(?:\.\d+)?)(?![\d.]|:\d)")
_UNIT_SECONDS = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}

# `<index>_<module repr> -- mean:<x>, std:<y>`.  Searched rather than anchored
# so that any prefix (timestamp, tag, logger name) is tolerated; the look-behind
# keeps the index from being the tail of a longer word or number.
_MODULE_RE = re.compile(
    r"(?<![\w.])(\d+)_(\S.*?)\s*--\s*mean:\s*([^\s,]*)\s*,\s*std:\s*([^\s,;]*)\s*$"
)

# The complete loss line; tokens are captured loosely and validated by _to_float.
_LOSS_RE = re.compile(
    r"Training loss:\s*([^\s(]*)\s*\(top-1:\s*([^\s%)]*)\s*%?\s*\)\s*--\s*"
    r"Validation loss:\s*([^\s(]*)\s*\(top-1:\s*([^\s%)]*)\s*%?\s*\)"
)
# Field by field, for loss lines that are cut or mangled.  Each number must be
# followed by its delimiter, so a number cut at the end of a line is not
# trusted (``45.6`` may be the start of ``45.67``).
_PARTIAL_LOSS_RES = (
    ("train_loss", "training loss", re.compile(r"Training loss:\s*([^\s(]+)(?=\s*\()")),
    (
        "train_top1",
        "training top-1",
        re.compile(r"Training loss:\s*[^\s(]*\s*\(top-1:\s*([^\s%)]+)\s*%?\s*\)"),
    ),
    ("test_loss", "validation loss", re.compile(r"Validation loss:\s*([^\s(]+)(?=\s*\()")),
    (
        "test_top1",
        "validation top-1",
        re.compile(r"Validation loss:\s*[^\s(]*\s*\(top-1:\s*([^\s%)]+)\s*%?\s*\)"),
    ),
)

# Strict number syntax: float() alone would also accept `1_000` or ` 1 `.
_NUMBER_RE = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE
)

# tqdm (`45%|####  | 176/391 [00:05<...]`) or keras-style (`[=====>...] 12/391`) bars.
_PROGRESS_RE = re.compile(r"\d{1,3}%\s*\||\|\s*\d+/\d+\s*\[|\[[=#>.\- ]{5,}\]\s*\d+/\d+")

# Words that only appear in records: an unmatched line holding one is a damaged record.
_RECORD_WORD_RE = re.compile(r"\bEPOCH\b|Training loss|Validation loss|top-1|mean:|std:")

# Lines the 2019 code writes that carry no metric, skipped silently wherever they appear: its
# per-batch progress (inside every epoch block, hundreds per epoch) and its set-up and saving
# messages (mltools/models.py, mltools/data.py, mltools/processing.py, best_practices.py and
# bottleneck.py of that code; "succesfully" is its spelling). A line may start with the file
# log's timestamp (`2019-05-03 14:02:11 -- `) or the console's `[TAG] LEVEL` header.
# Each run of spaces has one way to match (no `\s*x?\s*`): long lines stay linear-time.
_LOG_PREFIX = (
    r"(?:\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?\s*(?:--\s*)?)?"
    r"(?:\[\w+\]\s*(?:(?:DEBUG\.|INFO\.|WARN!|ERROR!|HIGH\.)\s*)?)?"
)
_KNOWN_MESSAGES = (
    r"Batch \d+/\d+ \(loaded in ",
    r"Will be writing a log of all messages in file ",
    r"You have not specified a save file",
    r"Establishing Baselines for Direct Feedback Alignment",
    r"Section \d+ -- ",
    r"Setting-up processing back-end",
    r"Using GPU \d+ with seed",
    r"CUDA is not available",
    r"Seeding with ",
    r"Preparing data for dataset ",
    r"Creating model",
    r"Using (?:a (?:convolutional|fully-connected) architecture|dropout|batch normalization|PAI)",
    r"Not using feedback normalization",
    r"Will be using (?:DFA|BP) for training",
    r"Prealigning ",
    r"Prealignment of module ",
    r"Training with ",
    r"Model: ",
    r"Checkpoint! saving model state to ",
    r"Final (?:validation )?with ",
    r"Finishing up: saving ",
    r"Running in ",
    r"(?:Training|Validation|Test) data succesfully fetched",
    r"(?:Train|Validation) loader succesfully created",
)
_KNOWN_LINE_RE = re.compile(_LOG_PREFIX + "(?:" + "|".join(_KNOWN_MESSAGES) + ")")

# Start of the warning about a line that is neither a record nor a known message.
UNRECOGNISED = "unrecognised line"
# Longer visible lines are never records (the longest, a module line with a timestamp, takes
# about 150 characters). The cap also keeps int() below its 4300-digit limit.
MAX_RECORD_CHARS = 1000


# --- public data type --------------------------------------------------------


@dataclass
class LegacyEpoch:
    """One epoch block of a 2019-code log.

    Attributes:
        epoch: k of ``EPOCH k/n``.
        epochs: n of ``EPOCH k/n`` (None when the header had no ``/n``).
        time_s: duration printed on the header line, in seconds, or None.
        train_loss, train_top1: training loss and top-1 accuracy in percent
            (e.g. 45.67), or None when missing or unparseable.
        test_loss, test_top1: the log's "Validation" figures, which are the
            evaluation (test) set; same units, or None.
        modules: alignment statistics in log order, each
            ``{"index": int, "name": str, "mean": float | None, "std": float | None}``.
    """

    epoch: int
    epochs: int | None
    time_s: float | None
    train_loss: float | None
    train_top1: float | None
    test_loss: float | None
    test_top1: float | None
    modules: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of all fields (module dicts are copied)."""
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "time_s": self.time_s,
            "train_loss": self.train_loss,
            "train_top1": self.train_top1,
            "test_loss": self.test_loss,
            "test_top1": self.test_top1,
            "modules": [dict(m) for m in self.modules],
        }


# --- public functions --------------------------------------------------------


def is_legacy_log(text: str) -> bool:
    """True when ``text`` looks like a 2019-code log.

    That is, it has an ``EPOCH k/n`` line and a ``Training loss:`` line.  Our
    own log.txt format never writes ``EPOCH `` in upper case, so it is False.
    """
    if not isinstance(text, str):
        return False
    plain = _ANSI_RE.sub("", text)  # colour codes may sit inside the keywords
    return bool(_EPOCH_LINE_RE.search(plain)) and bool(_TRAINING_LOSS_RE.search(plain))


def parse_legacy_log(text: str, source: str = "<log>") -> tuple[list[list[LegacyEpoch]], list[str]]:
    """Parse a 2019-code log into runs of epochs.

    Args:
        text: the whole log, already decoded (``errors="replace"`` is fine:
            replacement characters are reported as binary junk).
        source: name used in warnings, usually the file path.

    Returns:
        ``(runs, warnings)``: ``runs`` is a list of runs, each a list of
        :class:`LegacyEpoch` in log order; ``warnings`` is a list of strings
        ``'<source>:<line>: <problem>'`` sorted by 1-based line number.
    """
    parser = _Parser(source)
    if isinstance(text, (bytes, bytearray)):  # tolerate callers that forgot to decode
        text = bytes(text).decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")  # not splitlines(): \x0b, \x0c, \u2028 ... would shift line numbers
    if lines and lines[-1] == "":
        lines.pop()  # the text ended with a newline: nothing is cut
        cut_last = False
    else:
        cut_last = bool(lines)
    for i, raw in enumerate(lines, start=1):
        parser.feed(i, raw, cut=cut_last and i == len(lines))
    return parser.finish()


# --- internals ------------------------------------------------------------------


def _visible(raw: str) -> tuple[str, bool]:
    """Text of a physical line as a terminal would show it, and whether it held junk.

    Only what follows the last carriage return counts (progress bars redraw
    with ``\\r``); a trailing ``\\r`` is a CRLF line ending, not a redraw.
    """
    line = raw.rstrip("\r").rsplit("\r", 1)[-1]
    line = _ANSI_RE.sub("", line)
    # Junk becomes a space, not nothing, so that `0.4<NUL>57` cannot merge into 0.457.
    cleaned, n_junk = _JUNK_RE.subn(" ", line)
    return cleaned.strip(), n_junk > 0


def _to_float(token: str) -> float | None:
    """``token`` as a float when it is a well-formed number, else None."""
    token = token.strip()
    if not _NUMBER_RE.fullmatch(token):
        return None
    try:
        return float(token)
    except ValueError:  # pragma: no cover - the regex already guarantees syntax
        return None


def _group1(m: re.Match | None) -> str | None:
    """First group of a match, or None when there was no match."""
    return m.group(1) if m else None


def _epoch_time(tail: str) -> float | None:
    """Seconds printed after the ``EPOCH k/n`` match (``tail``), or None."""
    clock = _TIME_CLOCK_RE.search(tail)
    if clock:
        h, m, s = clock.groups()
        return int(h) * 3600.0 + int(m) * 60.0 + float(s)
    unit = _TIME_UNIT_RE.search(tail)
    if unit:
        return float(unit.group(1)) * _UNIT_SECONDS[unit.group(2)]
    return None


@dataclass
class _Open:
    """Book-keeping for the epoch currently being filled."""

    epoch: LegacyEpoch
    line: int  # line number of its header
    loss_seen: bool = False
    indices: set = field(default_factory=set)


class _Parser:
    """Line-by-line state machine behind :func:`parse_legacy_log`."""

    def __init__(self, source: str):
        self.source = source
        self.runs: list[list[LegacyEpoch]] = []
        self.run_meta: list[_Open] = []  # _Open of every epoch of the current run
        self.open: _Open | None = None
        self._warnings: list[tuple[int, int, str]] = []

    def warn(self, line: int, problem: str) -> None:
        # The counter keeps warnings of one line in the order they were raised.
        self._warnings.append((line, len(self._warnings), f"{self.source}:{line}: {problem}"))

    # -- per line ---------------------------------------------------------

    def feed(self, lineno: int, raw: str, cut: bool) -> None:
        """Handle one physical line; ``cut`` marks a last line with no line ending."""
        line, junk = _visible(raw)
        if not line:
            if junk:
                self.warn(lineno, "binary junk; line skipped")
            return
        if len(line) > MAX_RECORD_CHARS:
            # No record is that long (a runaway print, binary junk), and matching the record
            # patterns on such a line takes time quadratic in its length.
            self._unparsed(lineno, line, junk)
        elif _PROGRESS_RE.search(line):
            return  # progress-bar residue carries no metric
        elif (header := _EPOCH_RE.search(line)) is not None:
            self._header(lineno, line, header, junk, cut)
        elif "Training loss:" in line or "Validation loss:" in line:
            self._loss(lineno, line, junk)
        elif "mean:" in line and (module := _MODULE_RE.search(line)) is not None:
            # The substring test spares long junk lines the costlier regex.
            self._module(lineno, module, junk, cut)
        else:
            self._unparsed(lineno, line, junk)

    def _unparsed(self, lineno: int, line: str, junk: bool) -> None:
        """Warn about a line that is no record where that means something was lost."""
        if _RECORD_WORD_RE.search(line):
            self.warn(lineno, f"damaged record, not parsed: {line[:60]!r}")
        elif junk:
            self.warn(lineno, "binary junk; line skipped")
        elif self.open is not None and not self.open.loss_seen and not _KNOWN_LINE_RE.match(line):
            # Inside an epoch block only records and the 2019 code's own messages are
            # expected; elsewhere (preamble, between epochs) free text is normal and silent.
            self.warn(lineno, f"{UNRECOGNISED} in epoch {self.open.epoch.epoch}: {line[:60]!r}")

    def _header(self, lineno: int, line: str, m: re.Match, junk: bool, cut: bool) -> None:
        if cut:
            # `EPOCH 3/5` may be the start of `EPOCH 3/50`: do not trust it.
            self.warn(lineno, "last line is cut off; EPOCH header ignored")
            return
        if junk:
            self.warn(lineno, "binary junk in EPOCH line (replaced by spaces)")
        k = int(m.group(1))
        n = int(m.group(2)) if m.group(2) is not None else None
        self._close_epoch()
        prev = self.run_meta[-1].epoch if self.run_meta else None
        if prev is not None:
            n_changed = n is not None and prev.epochs is not None and n != prev.epochs
            if k <= prev.epoch or n_changed:
                self._close_run()
            elif k > prev.epoch + 1:
                self.warn(lineno, f"epoch counter jumps from {prev.epoch} to {k} (epochs missing)")
        epoch = LegacyEpoch(
            epoch=k,
            epochs=n,
            time_s=_epoch_time(line[m.end() :]),
            train_loss=None,
            train_top1=None,
            test_loss=None,
            test_top1=None,
            modules=[],
        )
        self.open = _Open(epoch, lineno)
        self.run_meta.append(self.open)

    def _loss(self, lineno: int, line: str, junk: bool) -> None:
        if self.open is None:
            self.warn(lineno, "loss line before any EPOCH line; ignored")
            return
        if self.open.loss_seen:
            self.warn(lineno, f"second loss line for epoch {self.open.epoch.epoch}; ignored")
            return
        self.open.loss_seen = True
        if junk:
            self.warn(lineno, "binary junk in loss line (replaced by spaces)")
        full = _LOSS_RE.search(line)
        names = [(attr, what) for attr, what, _ in _PARTIAL_LOSS_RES]
        if full:
            tokens = list(full.groups())
        else:
            tokens = [_group1(pattern.search(line)) for _, _, pattern in _PARTIAL_LOSS_RES]
            missing = [what for (_, what), tok in zip(names, tokens) if tok is None]
            self.warn(lineno, "incomplete loss line (truncated?); missing " + ", ".join(missing))
        for (attr, what), token in zip(names, tokens):
            if token is None:
                continue
            value = _to_float(token)
            if value is None:
                self.warn(lineno, f"cannot parse {what} {token!r}")
            setattr(self.open.epoch, attr, value)

    def _module(self, lineno: int, m: re.Match, junk: bool, cut: bool) -> None:
        if cut:
            # The std figure may have lost digits.
            self.warn(lineno, "last line is cut off; module line ignored")
            return
        if self.open is None:
            self.warn(lineno, "module line before any EPOCH line; ignored")
            return
        index = int(m.group(1))
        if index in self.open.indices:
            self.warn(lineno, f"module {index} repeated in epoch {self.open.epoch.epoch}; ignored")
            return
        if junk:
            self.warn(lineno, "binary junk in module line (replaced by spaces)")
        stats = {}
        for key, token in (("mean", m.group(3)), ("std", m.group(4))):
            stats[key] = _to_float(token)
            if stats[key] is None:
                self.warn(lineno, f"cannot parse module {index} {key} {token!r}")
        self.open.indices.add(index)
        self.open.epoch.modules.append(
            {"index": index, "name": m.group(2).strip(), "mean": stats["mean"], "std": stats["std"]}
        )

    # -- block ends -------------------------------------------------------

    def _close_epoch(self) -> None:
        if self.open is not None and not self.open.loss_seen:
            self.warn(self.open.line, f"epoch {self.open.epoch.epoch} has no loss line")
        self.open = None

    def _close_run(self) -> None:
        if not self.run_meta:
            return
        # A run's epochs all print the same modules, so fewer than the run's
        # maximum means lines were lost; runs with no module lines at all are fine.
        expected = max(len(meta.epoch.modules) for meta in self.run_meta)
        for meta in self.run_meta:
            got = len(meta.epoch.modules)
            if got < expected:
                self.warn(
                    meta.line, f"epoch {meta.epoch.epoch} has {got} of {expected} module lines"
                )
        self.runs.append([meta.epoch for meta in self.run_meta])
        self.run_meta = []

    def finish(self) -> tuple[list[list[LegacyEpoch]], list[str]]:
        """Close the last epoch and run; return ``(runs, warnings)``."""
        self._close_epoch()
        self._close_run()
        return self.runs, [msg for _, _, msg in sorted(self._warnings)]
