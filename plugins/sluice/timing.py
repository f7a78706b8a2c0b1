"""Reads bounded by time: durations, a source's time cursor and data-interval window, and when it is due.

A catalog entry may give `cursor: {field, param, lookback}` (ask for the records whose field is after the
newest one loaded, less the lookback), `window: {start_param, end_param, format}` (ask for the run's data
interval) and `every: 2d` (read it only when that long has passed since the interval it last read).
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sluice.errors import InvalidSource

_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# the DAG's cadence when no source of its catalog file asks for one
DEFAULT_EVERY = timedelta(days=1)
WINDOW_FORMATS = ("iso8601", "epoch", "date")
# epoch seconds as a source may spell them (a JSON number, or digits in a CSV): what sluice_cursor_time reads too
_EPOCH = re.compile(r"-?[0-9]{1,12}(\.[0-9]+)?")


def duration(value: object, where: str) -> timedelta:
    """A duration as the catalog spells it: a whole number and a unit, s m h d or w (`10m`, `6h`, `2d`)."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidSource(f"{where} must be a duration like 10m, 6h or 2d (units s, m, h, d, w), got {value!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _options(value: object, where: str, required: tuple[str, ...], optional: Mapping[str, str]) -> dict:
    """The string options of a catalog object: the required ones non-empty, unknown ones refused."""
    if not isinstance(value, Mapping):
        raise InvalidSource(f"{where} must be an object with {', '.join(required)}, got {value!r}")
    unknown = sorted(set(value) - {*required, *optional})
    if unknown:
        raise InvalidSource(f"{where}: unknown option {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join((*required, *optional))}")
    found = {**optional, **value}
    for name in (*required, *optional):
        if not isinstance(found.get(name), str) or (name in required and not found[name].strip()):
            raise InvalidSource(f"{where}.{name} must be a non-empty string, got {found.get(name)!r}")
    return found


def cursor_time(spelled: str) -> datetime | None:
    """A cursor value as a time (UTC when it has no offset), or None when it is not one: epoch seconds, or ISO
    8601 (a date, or a date and time). The SQL twin, sluice_cursor_time, picks the newest value of a batch."""
    text = spelled.strip()
    try:
        if _EPOCH.fullmatch(text):
            return datetime.fromtimestamp(float(text), timezone.utc)
        found = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return found if found.tzinfo else found.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Cursor:
    """An incremental read on a time field: the records whose `field` is after the checkpoint's cursor value
    less `lookback` (a margin re-read for records committed late at the source), asked as query parameter
    `param`. The checkpoint keeps the newest value loaded as the source spelled it."""

    field: str
    param: str
    lookback: str = "0s"

    @classmethod
    def of(cls, value: object, where: str) -> "Cursor":
        if isinstance(value, cls):
            return value
        found = _options(value, where, ("field", "param"), {"lookback": "0s"})
        duration(found["lookback"], f"{where}.lookback")
        return cls(found["field"], found["param"], found["lookback"])

    def to_entry(self) -> dict:
        return {"field": self.field, "param": self.param, "lookback": self.lookback}

    def bound(self, last: str) -> str:
        """What the read asks for after the checkpoint's value `last`: `last` less the lookback, spelled as the
        source spells its times (epoch seconds, a date, or ISO 8601 with its offset, Z kept); `last` itself when
        there is no lookback, or when it is not a time (the source gave it; it is sent back unchanged)."""
        margin = duration(self.lookback, "lookback")
        at = cursor_time(last)
        if not margin or at is None:
            return last
        text = last.strip()
        if _EPOCH.fullmatch(text):
            seconds = float(text) - margin.total_seconds()
            return str(math.floor(seconds)) if "." not in text else repr(seconds)
        if len(text) == 10:  # a date: the margin reaches back to the day it starts in
            return (date.fromisoformat(text) - timedelta(days=math.ceil(margin / timedelta(days=1)))).isoformat()
        earlier = datetime.fromisoformat(text) - margin
        spelled = earlier.isoformat(sep=text[10])
        return spelled.removesuffix("+00:00") + "Z" if text.endswith(("Z", "z")) else spelled


@dataclass(frozen=True)
class Window:
    """A read of the run's data interval [start, end): sent as query parameters start_param and end_param, in
    `format`: iso8601 (2026-01-01T00:00:00+00:00), epoch (seconds) or date (2026-01-01; the end exclusive)."""

    start_param: str
    end_param: str
    format: str = "iso8601"

    @classmethod
    def of(cls, value: object, where: str) -> "Window":
        if isinstance(value, cls):
            return value
        found = _options(value, where, ("start_param", "end_param"), {"format": "iso8601"})
        if found["format"] not in WINDOW_FORMATS:
            raise InvalidSource(f"{where}.format {found['format']!r} is not one of {', '.join(WINDOW_FORMATS)}")
        if found["start_param"] == found["end_param"]:
            raise InvalidSource(f"{where}: start_param and end_param are both {found['start_param']!r}")
        return cls(found["start_param"], found["end_param"], found["format"])

    def to_entry(self) -> dict:
        return {"start_param": self.start_param, "end_param": self.end_param, "format": self.format}

    def query(self, start: datetime, end: datetime) -> dict[str, str]:
        return {self.start_param: self._spell(start), self.end_param: self._spell(end)}

    def _spell(self, at: datetime) -> str:
        at = at.astimezone(timezone.utc)
        if self.format == "epoch":
            return str(math.floor(at.timestamp()))
        if self.format == "date":
            return at.date().isoformat()
        return at.isoformat()


def not_due(every: timedelta | None, *, read_until: datetime | None, interval_end: datetime | None,
            run_type: str | None) -> str | None:
    """Why a source is not read in this run, or None when it is due. Only scheduled runs skip: a source is due
    when it has no `every`, was never read in a run with a data interval, or its last read interval ended at
    least `every` before this one ends. A backfill or a manual run reads every source (someone asked for it)."""
    if every is None or run_type != "scheduled" or read_until is None or interval_end is None:
        return None
    if interval_end - read_until >= every:
        return None
    return (f"not due: read up to {read_until.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC, every "
            f"{_spelled(every)}; due from the run whose interval ends "
            f"{(read_until + every).astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")


def _spelled(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def schedule(entries: list) -> timedelta:
    """The DAG's cadence for a catalog: the finest `every` any of its entries asks for, DEFAULT_EVERY when none
    does. Read at parse time from the catalog file; a malformed `every` is left to init_schema to report."""
    asked = []
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("every"):
            try:
                asked.append(duration(entry["every"], "every"))
            except InvalidSource:
                continue
    return min(asked, default=DEFAULT_EVERY)
