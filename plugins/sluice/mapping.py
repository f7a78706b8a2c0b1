"""Mapping params: which source field feeds which normalized column."""

from collections.abc import Mapping

from sluice.errors import MappingError

COLUMNS = ("source_id", "name", "value", "description")
_MISSING = object()


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
    """The value of `field` in record; a dotted path (user.id) reaches into nested objects. _MISSING if absent."""
    if field in record:
        return record[field]
    value = record
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def is_missing(value) -> bool:
    return value is _MISSING


def kind(value) -> str:
    """A JSON-ish name for a value's type, for reasons a user reads: 'an object', 'a list', 'null'."""
    names = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null", str: "a string",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)
