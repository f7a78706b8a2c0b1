"""The type mix of a source's fields: per mapped or declared field, how many of a batch's present values are JSON
strings, numbers, booleans, objects or arrays (schema drift the null rate cannot see: a number field that starts to
arrive as strings).

Tallied while the API reader decodes each record (sluice.api_source), the one parse every record gets: no second
parse of the batch. A CSV source has no type mix (every value is text; a blank one is the null rate's), so its
batches carry none. sluice.quality keeps the shares in the run's measures and sluice.anomalies compares them with
the source's history.
"""

import decimal
from collections.abc import Mapping

from sluice import mapping

# a decoded JSON value's Python type -> its JSON type (json_stream decodes numbers as int, float or Decimal)
JSON_TYPES = {str: "string", int: "number", float: "number", decimal.Decimal: "number", bool: "boolean",
              dict: "object", list: "array"}


def paths(source) -> dict[str, str]:
    """Each mapped column and declared field of a source (sluice.sources.Source) -> its path in a record."""
    return {**source.mapping, **{name: spec.path for name, spec in source.fields.items()}}


class Tally:
    """The counts of one batch: fields (name -> path) looked up in each record given to add()."""

    def __init__(self, fields: Mapping[str, str]):
        self._fields = list(fields.items())
        self.counts: dict[str, dict[str, int]] = {name: {} for name in fields}

    def add(self, record: Mapping) -> None:
        for name, path in self._fields:
            value = mapping.lookup(record, path)
            if value is None or mapping.is_missing(value):
                continue  # a missing value has no type: the null rate counts it
            kind = JSON_TYPES.get(type(value), "other")
            counts = self.counts[name]
            counts[kind] = counts.get(kind, 0) + 1


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    """Each JSON type's share of a field's present values ({} when none is present)."""
    total = sum(counts.values())
    return {kind: count / total for kind, count in sorted(counts.items())} if total else {}
