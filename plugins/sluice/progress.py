"""Task-log lines for the long phases of a step: progress while it runs, one summary sentence when it ends.

The rule: a phase logs a progress line only once INTERVAL seconds have passed since it began or since its
previous progress line, so never more often than every 10 seconds, and a phase shorter than that logs none.
Each line says how far it got, out of the total when that is known (with the percentage), and for how long
it has run. `finish` always logs the phase's summary line, with its duration. Lines are sentences meant to be
read in the Airflow task log, e.g. "csv: downloading, 20.0 MB of 52.4 MB (38 %) after 10.0 s".

Callers that advance a row at a time consult the clock only every CHECK_EVERY rows: a million rows cost a
few hundred clock reads, not a million.
"""

import logging
import time
from collections.abc import Callable, Iterable

from sluice.redact import redact

INTERVAL = 10.0
CHECK_EVERY = 4096
# quarantine and reject reasons quoted in a summary line; the rest are counted
REASONS_SHOWN = 3


def count(n: float) -> str:
    return f"{n:,.0f}"


_UNITS = ("B", "kB", "MB", "GB", "TB")


def size(n: float) -> str:
    """Bytes in decimal units: 950 B, 45.1 kB, 52.4 MB."""
    exponent = 0
    while n >= 1000 and exponent < len(_UNITS) - 1:
        n /= 1000
        exponent += 1
    return f"{n:,.0f} B" if exponent == 0 else f"{n:,.1f} {_UNITS[exponent]}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def reasons(total: int, first: Iterable[str]) -> str:
    """'8 (line 17: ...; line 40: ...; line 52: ...; and 5 more)': a count with its first reasons, which can
    quote source values, so credentials in them are masked."""
    shown = [redact(reason) for reason in list(first)[:REASONS_SHOWN]]
    if not shown:
        return count(total)
    more = total - len(shown)
    return f"{count(total)} ({'; '.join(shown)}{f'; and {count(more)} more' if more > 0 else ''})"


class Progress:
    """One phase of a step, e.g. Progress(log, "csv", "downloading", total=..., measure=size)."""

    def __init__(self, log: logging.Logger, label: str, doing: str, *, total: float | None = None,
                 measure: Callable[[float], str] = count, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._label = label
        self._doing = doing
        self.total = total
        self._measure = measure
        self._interval = INTERVAL if interval is None else interval
        self._clock = clock
        self.started = clock()
        self._last = self.started

    def update(self, done: float, detail: str = "") -> None:
        """Log how far the phase got (`done`, in the unit of the total; `detail`, more words) if the rule allows."""
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        if self.total and done <= self.total:
            amount = f"{self._measure(done)} of {self._measure(self.total)} ({100 * done / self.total:.0f} %)"
        else:  # unknown, or exceeded (a body larger once decoded than its Content-Length)
            amount = f"{self._measure(done)} so far"
        self._log.info("%s: %s, %s%s after %s", self._label, self._doing, amount,
                       f", {detail}" if detail else "", duration(now - self.started))

    def elapsed(self) -> float:
        return self._clock() - self.started

    def finish(self, summary: str) -> float:
        """Log the phase's summary sentence with its duration; return the seconds it took."""
        seconds = self.elapsed()
        self._log.info("%s: %s in %s", self._label, summary, duration(seconds))
        return seconds
