"""Mapping params: which source field feeds which normalized column."""

import decimal
import re
from collections.abc import Mapping

from sluice.errors import MappingError

COLUMNS = ("source_id", "name", "value", "description")
_MISSING = object()
MISSING = _MISSING  # what lookup gives for an absent field
# A list index in a dotted path: a plain non-negative integer. Nine digits are plenty (a jsonb array holds
# fewer than 2**28 items) and keep int() cheap on a hostile path.
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")


def validate(mapping: object, param: str) -> dict[str, str]:
    """Check a mapping param ({column: source field}) and return it as a plain dict."""
    if not isinstance(mapping, Mapping):
        raise MappingError(f"{param} must be an object like {{\"source_id\": \"id\"}}, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(COLUMNS))
    if unknown:
        raise MappingError(f"{param} has unknown column(s) {', '.join(unknown)}; allowed: {', '.join(COLUMNS)}")
    if "source_id" not in mapping:
        raise MappingError(f"{param} must map source_id")
    for column, field in mapping.items():
        if not isinstance(field, str) or not field.strip():
            raise MappingError(f"{param}.{column} must be a non-empty field name, got {field!r}")
    return dict(mapping)


def lookup(record: Mapping, field: str):
    """The value of `field` in record, or _MISSING if absent.

    A field that is a key of record names that key. Otherwise it is a dotted path, each segment a key of an
    object or an index of a list counted from 0 and written as a plain non-negative integer: `user.id`,
    `tags.0`, `items.2.name`. Any other segment on a list (`-1`, `01`, `+1`, ` 1`) is missing.
    sluice_lookup in sql/functions.sql is this same rule for the SQL fast path of normalize.
    """
    if field in record:
        return record[field]
    value = record
    for part in field.split("."):
        value = _child(value, part)
        if value is _MISSING:
            break
    return value


def _child(value, part: str):
    if isinstance(value, Mapping):
        return value.get(part, _MISSING)
    if isinstance(value, list) and _INDEX.fullmatch(part) and int(part) < len(value):
        return value[int(part)]
    return _MISSING


def is_missing(value) -> bool:
    return value is _MISSING


def kind(value) -> str:
    """A JSON-ish name for a value's type, for reasons a user reads: 'an object', 'a list', 'null'."""
    names = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null", str: "a string",
             int: "an integer", float: "a number", decimal.Decimal: "a number"}
    return names.get(type(value), type(value).__name__)
