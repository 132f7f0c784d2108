"""How far a sweep is: runs done out of all, diverged and failed counts, elapsed time and an ETA.

The ETA counts epochs, not runs: each run to train is expected to take ``epochs + 1`` epochs
(epoch 0 evaluates the initial model), fewer when it resumes, and the time per epoch is the
mean measured so far over the whole sweep. On a terminal this is one tqdm bar; with ``--quiet``,
or when stdout is a file (``nohup``, a cluster log), a plain line every few runs instead.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Callable

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SweepProgress:
    """Progress of the runs of one sweep, fed by :meth:`epoch` and :meth:`run_done`.

    ``expected[k]``: epochs run ``k`` still has to train. ``bar``: a tqdm bar (a terminal);
    else ``echo`` gets a plain line when ``every`` more runs have finished, and at the end.
    ``clock`` is for tests.
    """

    def __init__(
        self,
        expected: Sequence[int],
        bar: bool = True,
        echo: Callable[[str], None] = print,
        every: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.expected = list(expected)
        self.seen = [0] * len(self.expected)
        self.outcomes: Counter = Counter()
        self.echo, self.clock = echo, clock
        self.every = every or max(1, round(len(self.expected) / 10))
        self.start = clock()
        self.last_line = 0
        self.bar = (
            tqdm(
                total=sum(self.expected),
                unit="epoch",
                smoothing=0,
                file=sys.stderr,
                dynamic_ncols=True,
                desc=self._desc(),
            )
            if bar
            else None
        )

    # -- counts -----------------------------------------------------------------------------------
    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def epochs_done(self) -> int:
        return sum(self.seen)

    @property
    def epochs_left(self) -> int:
        return sum(self.expected) - self.epochs_done

    def eta(self) -> float | None:
        """Seconds left: epochs left times the mean time per epoch so far (None before one)."""
        if not self.epochs_done:
            return None
        return self.epochs_left * (self.clock() - self.start) / self.epochs_done

    # -- events -----------------------------------------------------------------------------------
    def epoch(self, run: int) -> None:
        """Run ``run`` finished one more epoch."""
        self.seen[run] += 1
        if self.seen[run] > self.expected[run]:  # resumed from an older checkpoint than expected
            self.expected[run] = self.seen[run]
            if self.bar is not None:
                self.bar.total = sum(self.expected)
        if self.bar is not None:
            self.bar.update(1)

    def run_done(self, run: int, outcome: str) -> None:
        """Run ``run`` ended with ``outcome`` (done, diverged, failed, skipped, busy): the epochs it
        will not train (it diverged, failed, or another process trained it) leave the total."""
        self.outcomes[outcome] += 1
        self.expected[run] = self.seen[run]
        if self.bar is not None:
            self.bar.total = sum(self.expected)
            self.bar.set_description_str(self._desc(), refresh=False)
            self.bar.refresh()
        elif self.finished - self.last_line >= self.every or self.finished == len(self.expected):
            self.last_line = self.finished
            self.echo(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # -- text -------------------------------------------------------------------------------------
    def _counts(self) -> str:
        bad = [f"{self.outcomes[k]} {k}" for k in ("diverged", "failed") if self.outcomes[k]]
        return f" ({', '.join(bad)})" if bad else ""

    def _desc(self) -> str:
        return f"runs {self.finished}/{len(self.expected)}{self._counts()}"

    def line(self) -> str:
        """``sweep: 12/54 runs (1 diverged), 3m10s elapsed, about 9m40s left``."""
        eta = self.eta()
        left = (
            "done"
            if self.finished == len(self.expected)
            else (f"about {format_seconds(eta)} left" if eta is not None else "no epoch timed yet")
        )
        return (
            f"sweep: {self.finished}/{len(self.expected)} runs{self._counts()}, "
            f"{format_seconds(self.clock() - self.start)} elapsed, {left}"
        )
