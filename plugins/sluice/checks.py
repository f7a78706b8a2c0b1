"""Data quality checks a catalog entry declares (`checks:`), and the anomaly detection every source gets.

Row-level checks (ROW_CHECKS) are rules of a field: sluice.rules adds the `error` ones to the marshmallow schema that
normalizes each record, so a record that fails one is quarantined into rejected_records with the check as its
reason; a `warn` one is counted by sluice.quality over the batch's normalized rows (the record loads). Batch-level
checks (BATCH_CHECKS) are verdicts on a whole batch, measured by sluice.quality before the upsert publishes anything.
Everything here is checked with the catalog, before any source is read.
"""

import datetime
import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sluice import timing
from sluice.errors import InvalidSource

SEVERITIES = ("warn", "error")
# check -> (its options: required, optional); every check also takes `severity`
ROW_CHECKS = {"not_null": (("field",), ()), "accepted_values": (("field", "values"), ()),
              "range": (("field",), ("min", "max")), "pattern": (("field", "regex"), ()),
              "max_length": (("field", "max"), ())}
BATCH_CHECKS = {"row_count": ((), ("min", "max")), "reject_rate": (("max",), ()),
                "null_rate": (("field", "max"), ()), "unique": (("field",), ()),
                "freshness": (("field", "max_age"), ()), "changed_rate": (("max",), ())}
KINDS = {**ROW_CHECKS, **BATCH_CHECKS}
# the types a unified column is read as (sluice.rules: value is a number, the others text)
COLUMN_TYPES = {"source_id": "text", "name": "text", "value": "number", "description": "text"}
NUMBER_TYPES = ("number", "integer", "numeric")
TIME_TYPES = ("timestamp", "date")
TEXT_TYPES = ("text", "json")
# the anomaly detector's defaults: the runs of history compared against, and the fewest that give a verdict
HISTORY_RUNS, MIN_HISTORY_RUNS = 14, 5


@dataclass(frozen=True)
class Check:
    """One declared check: its kind (KINDS), the mapped or declared field it reads (row-level checks, null_rate,
    unique, freshness), its bounds, and what a failure does (severity: warn records and notifies, error holds)."""

    check: str
    field: str = ""
    severity: str = "error"
    min: float | str | None = None
    max: float | str | None = None
    values: tuple = ()
    regex: str = ""
    max_age: str = ""

    @property
    def name(self) -> str:
        """How results and reasons name it: row_count, null_rate:description."""
        return f"{self.check}:{self.field}" if self.field else self.check

    @property
    def row_level(self) -> bool:
        return self.check in ROW_CHECKS

    @property
    def quarantines(self) -> bool:
        """A row-level error check: a rule of the normalization schema, whose failing records are quarantined."""
        return self.row_level and self.severity == "error"

    def threshold(self) -> str:
        """The bound as results show it: '<= 0.05', '10..1000', 'in [a, b]', 'unique'."""
        if self.check == "accepted_values":
            return "in [" + ", ".join(map(str, self.values)) + "]"
        if self.check == "pattern":
            return f"matches {self.regex}"
        if self.check == "freshness":
            return f"newest within {self.max_age}"
        if self.check in ("not_null", "unique"):
            return "0 failing" if self.check == "not_null" else "no duplicates"
        if self.min is not None and self.max is not None:
            return f"{self.min}..{self.max}"
        return f">= {self.min}" if self.min is not None else f"<= {self.max}"

    def to_entry(self) -> dict:
        entry = {"check": self.check, "severity": self.severity}
        for name in ("field", "min", "max", "regex", "max_age"):
            if getattr(self, name) not in ("", None):
                entry[name] = getattr(self, name)
        if self.values:
            entry["values"] = list(self.values)
        return entry

    @classmethod
    def of(cls, value: object, where: str, field_types: Mapping[str, str]) -> "Check":
        """A check from a catalog entry's `checks` list; field_types: each mapped column and declared field of the
        source -> its type, which the field a check names must be one of."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping) or value.get("check") not in KINDS:
            raise InvalidSource(f"{where}: each check must be an object whose `check` is one of "
                                f"{', '.join(KINDS)}, got {value!r}")
        kind = value["check"]
        where = f"{where} {kind}" + (f" on {value['field']!r}" if isinstance(value.get("field"), str) else "")
        required, optional = KINDS[kind]
        unknown = sorted(set(value) - {"check", "severity", *required, *optional})
        if unknown:
            raise InvalidSource(f"{where}: unknown option {', '.join(map(repr, unknown))}; it takes "
                                f"{', '.join((*required, *optional, 'severity'))}")
        missing = [name for name in required if name not in value]
        if missing or (kind in ("range", "row_count") and "min" not in value and "max" not in value):
            raise InvalidSource(f"{where}: needs {', '.join(missing) or 'min or max'}")
        severity = value.get("severity", "error")
        if severity not in SEVERITIES:
            raise InvalidSource(f"{where}: severity must be warn or error, got {severity!r}")
        found = cls(kind, severity=severity, **{name: value[name] for name in ("field", "regex", "max_age")
                                                 if name in value})
        kwargs = {}
        field_type = None
        if "field" in required:
            field_type = field_types.get(found.field) if isinstance(found.field, str) else None
            if field_type is None:
                raise InvalidSource(f"{where}: field {found.field!r} is neither mapped nor declared; known: "
                                    f"{', '.join(field_types)}")
        if kind in ("reject_rate", "null_rate", "changed_rate"):
            kwargs["max"] = _share(value["max"], f"{where}: max")
        elif kind == "row_count":
            kwargs.update({name: _count(value[name], f"{where}: {name}") for name in ("min", "max") if name in value})
        elif kind == "max_length":
            if field_type not in TEXT_TYPES:
                raise InvalidSource(f"{where}: max_length reads text, and {found.field!r} is {field_type}")
            kwargs["max"] = _count(value["max"], f"{where}: max")
        elif kind == "range":
            kwargs.update({name: _bound(value[name], field_type, f"{where}: {name}")
                           for name in ("min", "max") if name in value})
        elif kind == "accepted_values":
            values = value["values"]
            if not isinstance(values, list) or not values or not all(
                    isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in values):
                raise InvalidSource(f"{where}: values must be a non-empty list of strings or numbers, got {values!r}")
            kwargs["values"] = tuple(values)
        elif kind == "pattern":
            if not isinstance(found.regex, str) or not found.regex:
                raise InvalidSource(f"{where}: regex must be a non-empty regular expression")
            try:
                re.compile(found.regex)
            except re.error as exc:
                raise InvalidSource(f"{where}: regex {found.regex!r} is not a regular expression: {exc}") from None
        elif kind == "freshness":
            timing.duration(found.max_age, f"{where}: max_age")
        check = cls(kind, found.field, severity, **kwargs, regex=found.regex, max_age=found.max_age)
        if check.min is not None and check.max is not None and _ordered(check.min, field_type) > _ordered(
                check.max, field_type):
            raise InvalidSource(f"{where}: min {check.min!r} is above max {check.max!r}")
        return check


def _share(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidSource(f"{where} must be a share from 0 to 1, got {value!r}")
    return float(value)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSource(f"{where} must be a whole number from 0 up, got {value!r}")
    return value


def _bound(value: object, field_type: str, where: str):
    """A range's bound: a number for a number field, an ISO date or date-time for a time field."""
    if field_type in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidSource(f"{where} must be a number (the field is {field_type}), got {value!r}")
        return value
    if field_type in TIME_TYPES:
        try:
            _ordered(value, field_type)
        except (TypeError, ValueError):
            raise InvalidSource(f"{where} must be an ISO 8601 {'date' if field_type == 'date' else 'date-time'} "
                                f"(the field is {field_type}), got {value!r}") from None
        return value
    raise InvalidSource(f"{where}: range reads numbers and times, and the field is {field_type}")


def _ordered(value, field_type: str | None):
    """A value in the order a range compares: a Decimal, a date, or an aware UTC date-time."""
    if field_type == "date":
        return datetime.date.fromisoformat(value)
    if field_type == "timestamp":
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    return decimal.Decimal(str(value))


def parse(value: object, where: str, field_types: Mapping[str, str]) -> tuple[Check, ...]:
    """A catalog entry's `checks` (a list), each checked; two checks of one name are refused."""
    if not isinstance(value, (list, tuple)):
        raise InvalidSource(f"{where}: checks must be a list of checks, got {value!r}")
    found = tuple(Check.of(item, f"{where}: check", field_types) for item in value)
    names = [check.name for check in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidSource(f"{where}: check {', '.join(twice)} is declared twice")
    return found


@dataclass(frozen=True)
class Anomalies:
    """The anomaly detection of one source (catalog `anomalies`: false, or {runs, severity}): its batch compared
    with its last `runs` successful runs (sluice.anomalies), a failure of `severity`."""

    enabled: bool = True
    runs: int = HISTORY_RUNS
    severity: str = "warn"

    @classmethod
    def of(cls, value: object, where: str) -> "Anomalies":
        if isinstance(value, cls):
            return value
        if value is False:
            return cls(enabled=False)
        if not isinstance(value, Mapping) or set(value) - {"runs", "severity", "enabled"}:
            raise InvalidSource(f"{where}: anomalies must be false or an object with runs and severity, "
                                f"got {value!r}")
        runs = value.get("runs", HISTORY_RUNS)
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < MIN_HISTORY_RUNS:
            raise InvalidSource(f"{where}: anomalies.runs must be a whole number of at least {MIN_HISTORY_RUNS} "
                                f"(no verdict comes before {MIN_HISTORY_RUNS} runs of history), got {runs!r}")
        severity = value.get("severity", "warn")
        if severity not in SEVERITIES:
            raise InvalidSource(f"{where}: anomalies.severity must be warn or error, got {severity!r}")
        enabled = value.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidSource(f"{where}: anomalies.enabled must be true or false, got {enabled!r}")
        return cls(enabled, runs, severity)

    def to_entry(self) -> dict:
        return {"enabled": self.enabled, "runs": self.runs, "severity": self.severity}


def validators(check: Check, field_type: str) -> list:
    """The marshmallow validators of a row-level check on a field of field_type (not_null is the field being
    required, sluice.rules): each failure's message names the check, which becomes the reject's reason."""
    from marshmallow import ValidationError  # not at import: the DAG file imports this module through sources

    def fail(detail: str):
        raise ValidationError(f"fails check {check.name} ({check.threshold()}): {detail}")

    if check.check == "accepted_values":
        accepted = {_comparable(item, field_type) for item in check.values}

        def accepted_value(value):
            if _comparable(value, field_type) not in accepted:
                fail(f"{value!r} is not accepted")
        return [accepted_value]
    if check.check == "range":
        low = None if check.min is None else _ordered(check.min, field_type)
        high = None if check.max is None else _ordered(check.max, field_type)

        def in_range(value):
            ordered = _ordered(value, field_type)
            if (low is not None and ordered < low) or (high is not None and ordered > high):
                fail(f"{value!r} is out of range")
        return [in_range]
    if check.check == "pattern":
        regex = re.compile(check.regex)

        def matches(value):
            if not isinstance(value, str) or regex.search(value) is None:
                fail(f"{value!r} does not match")
        return [matches]
    if check.check == "max_length":
        def short_enough(value):
            if len(value if isinstance(value, str) else str(value)) > check.max:
                fail(f"{len(str(value))} characters")
        return [short_enough]
    return []


def _comparable(value, field_type: str):
    """accepted_values compares numbers by value (1 and 1.0 alike) and everything else as text."""
    if field_type in NUMBER_TYPES and not isinstance(value, bool):
        try:
            return decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            return str(value)
    return str(value)
