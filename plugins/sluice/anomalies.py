"""Is a batch's measure unusual for its source? A robust comparison with the source's recent successful runs.

The band around the history's median is the widest of: k robust standard deviations (1.4826 x the median
absolute deviation), an absolute floor and a relative floor (a share of the median). The floors keep a perfectly
steady history (MAD 0) from flagging a one-row difference; a drop to zero of a count that never was zero is
flagged whatever the band, so a volatile history cannot hide it. A field's type mix (type -> share) is judged by its
total-variation distance from the history's median shares, against the history's own distances from them.
Plain Python: a few numbers per measure.
"""

import statistics
from dataclasses import dataclass

from sluice.checks import MIN_HISTORY_RUNS

# robust z beyond which a value is unusual (3.5 is the usual cut for MAD-based scores)
SENSITIVITY = 3.5
MAD_TO_SIGMA = 1.4826
# a count may move by this many rows, or this share of its median, without being unusual
COUNT_FLOOR, RELATIVE_FLOOR = 2, 0.1
# a share (reject rate, null rate...) may move this much, or two rows' worth of the batch, whichever is more
SHARE_FLOOR = 0.02


@dataclass(frozen=True)
class Verdict:
    anomalous: bool | None  # None: too little history for a verdict
    median: float | None = None
    low: float | None = None
    high: float | None = None
    value: float | None = None  # what was judged, when not the value given (a type mix's distance)

    def detail(self) -> str:
        if self.anomalous is None:
            return "too little history"
        return f"median {self.median:.4g} of the recent runs"


def detect(history: list[float], value: float, *, floor: float, count: bool = False,
           min_history: int = MIN_HISTORY_RUNS) -> Verdict:
    """The verdict on value against history (oldest first or not: order plays no part). floor: the least change
    that may count (COUNT_FLOOR for a count, share_floor() for a share); count: a drop to zero is always flagged."""
    if len(history) < min_history:
        return Verdict(None)
    median = statistics.median(history)
    spread = MAD_TO_SIGMA * statistics.median(abs(item - median) for item in history)
    allowed = max(SENSITIVITY * spread, floor, RELATIVE_FLOOR * abs(median))
    low, high = median - allowed, median + allowed
    to_zero = count and value == 0 and min(history) > 0
    return Verdict(to_zero or not low <= value <= high, median, max(low, 0.0), high)


def share_floor(rows: int) -> float:
    """The least change of a share over a batch of `rows` that may count: two rows' worth, at least SHARE_FLOOR."""
    return max(SHARE_FLOOR, 2 / rows) if rows else 1.0


def distance(mix: dict[str, float], reference: dict[str, float]) -> float:
    """Total-variation distance of two type mixes (type -> share): the share of values whose type would have to
    change for one to become the other, 0 to 1."""
    return 0.5 * sum(abs(mix.get(kind, 0.0) - reference.get(kind, 0.0)) for kind in {*mix, *reference})


def detect_mix(history: list[dict[str, float]], mix: dict[str, float], *, floor: float,
               min_history: int = MIN_HISTORY_RUNS) -> Verdict:
    """The verdict on a field's type mix against its history: its distance from the history's median shares (each
    type's median) beyond the widest of the history's own typical distance from them plus k robust standard
    deviations of those distances, and floor (share_floor()). median, low and high: of the distance."""
    if len(history) < min_history:
        return Verdict(None)
    median_mix = {kind: statistics.median(past.get(kind, 0.0) for past in history)
                  for kind in {kind for past in history for kind in past} | set(mix)}
    past = [distance(entry, median_mix) for entry in history]
    typical = statistics.median(past)
    spread = MAD_TO_SIGMA * statistics.median(abs(item - typical) for item in past)
    allowed = max(typical + SENSITIVITY * spread, floor)
    moved = distance(mix, median_mix)
    return Verdict(moved > allowed, typical, 0.0, allowed, moved)
