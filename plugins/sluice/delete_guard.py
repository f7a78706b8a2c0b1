"""How much of a source's live rows one read may soft-delete, and what a person does when a real drop is refused.

The limit is the source's catalog field max_delete_fraction, else SLUICE_MAX_DELETE_FRACTION; the DAG param
accept_deletes ({"customers": 0.9}) raises it for one run's named sources, after a person looked at the drop.
"""

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sluice import progress
from sluice.errors import InvalidSource

PARAM = "accept_deletes"


@dataclass(frozen=True)
class DeleteLimit:
    fraction: float
    origin: str  # what set it, as the refusal names it

    def allowed(self, live_rows: int) -> int:
        """How many of live_rows a read may delete (rounded first: 0.29 * 100 is 28.999999999999996 in floats)."""
        return math.floor(round(self.fraction * live_rows, 6))


DEFAULT_ORIGIN = "SLUICE_MAX_DELETE_FRACTION"
# the quality gate records the guard's judgement of a whole read as a check of this name
CHECK = "deletes"


@dataclass(frozen=True)
class Measured:
    """The guard's judgement of one whole read: how many of the source's live rows it would delete, under which
    limit. The quality gate records it as its check `deletes`."""

    missing: int
    live_rows: int
    limit: DeleteLimit

    @property
    def share(self) -> float:
        return self.missing / self.live_rows

    @property
    def refused(self) -> bool:
        return self.missing > self.limit.allowed(self.live_rows)

    def threshold(self) -> str:
        return f"<= {self.limit.fraction:g} ({self.limit.origin})"


def fraction(value: object, where: str) -> float:
    """value as a fraction of live rows (0..1), or InvalidSource naming where it was given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # nan fails too
        raise InvalidSource(f"{where} must be a number from 0 to 1 (a fraction of the source's live rows), "
                            f"got {value!r}")
    return float(value)


def accepted(value: object, names: Iterable[str] | None = None) -> dict[str, float]:
    """The run's accept_deletes param as {source: fraction}, checked; names: the run's sources, which it must
    name (None: not checked again)."""
    if value in (None, {}):
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSource(f"{PARAM} must be an object like {{\"customers\": 0.9}}, got {type(value).__name__}: "
                            "no delete can be accepted. Give each source's name and the fraction of its live rows "
                            "this run may delete")
    found = {name: fraction(share, f"{PARAM}.{name}") for name, share in value.items()}
    if names is not None:
        known = set(names)
        unknown = sorted(set(found) - known)
        if unknown:
            raise InvalidSource(f"{PARAM} names {', '.join(map(repr, unknown))}, not a source of this run's catalog "
                                f"({', '.join(sorted(known))}): nothing would be accepted for it. Name the source as "
                                "the catalog does")
    return found


def limit(max_delete_fraction: float | None, default: float, accept: float | None = None) -> DeleteLimit:
    """The limit of one source's read: its own fraction, else the default, raised to what this run accepts."""
    own = (DeleteLimit(max_delete_fraction, "its max_delete_fraction") if max_delete_fraction is not None
           else DeleteLimit(default, DEFAULT_ORIGIN))
    if accept is not None and accept > own.fraction:
        return DeleteLimit(accept, f"this run's {PARAM}")
    return own


def refusal(source: str, missing: int, live_rows: int, guard: DeleteLimit) -> str:
    """Why a read is refused, what it cost, and how a person accepts the drop when it is real."""
    needed = min(1, math.ceil(missing * 100 / live_rows) / 100)
    accept = json.dumps({source: needed})
    return (f"{source}: the read would delete {progress.count(missing)} of {progress.count(live_rows)} live rows "
            f"({missing / live_rows:.0%}), more than {guard.origin} {guard.fraction:g}; nothing was deleted and "
            f"nothing of the source was loaded. If the source really shrank, trigger a run with {PARAM} {accept} "
            f"to accept it (airflow dags trigger etl_pipeline -c '{{\"{PARAM}\": {accept}}}'), or raise its "
            "max_delete_fraction in the catalog")
