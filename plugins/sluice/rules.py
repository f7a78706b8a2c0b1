"""The normalization rules: one marshmallow schema decides what a valid normalized record is.

Normalization(mapping) is what the pipeline uses: the rules for one mapping, as the SQL fast path's parameters,
the input key and the schema's validation of a record.
"""

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping

from marshmallow import Schema, ValidationError, fields

from sluice import mapping

# Bump when the rules change, so every record is normalized again by the next run.
RULES_VERSION = "2"  # 2: dotted paths index lists (tags.0); records the fast path read otherwise are redone
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Whitespace as str.strip() sees it, for the SQL fast path: a value with any of it at either end (one that
# btrim() with these characters would change) is left to the schema, which trims it.
SPACE_CHARACTERS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


class Text(fields.Field):
    """A string, or a number written as one; surrounding whitespace trimmed, empty means missing."""

    default_error_messages = {"invalid": "is {kind}, expected text", "required": "missing", "null": "missing"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("invalid", kind=mapping.kind(value))
        text = str(value).strip()
        if not text:
            if self.required:
                raise self.make_error("required")
            return None
        return text


class Number(fields.Field):
    """A finite float from a JSON number or a plain decimal string ('1,234', 'NaN' and '1_000' are refused)."""

    default_error_messages = {
        "invalid": "{value!r} is not a number",
        "type": "is {kind}, expected a number",
        "finite": "{value!r} is not a finite number",
        "required": "missing",
        "null": "missing",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("type", kind=mapping.kind(value))
        if isinstance(value, str):
            text = value.strip()
            if not text:
                raise self.make_error("required")
            if not _DECIMAL.fullmatch(text):
                if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                    raise self.make_error("finite", value=value)
                raise self.make_error("invalid", value=value)
            value = text
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            raise self.make_error("finite", value=value) from None
        if not math.isfinite(number):
            raise self.make_error("finite", value=value)
        return number


class NormalizedRecordSchema(Schema):
    source_id = Text(required=True)
    name = Text(required=True)
    value = Number(required=True)
    description = Text(load_default=None, allow_none=True)


SCHEMA = NormalizedRecordSchema()
COLUMN_ORDER = {name: index for index, name in enumerate(mapping.COLUMNS)}


def mapped_fields(data: Mapping, field_map: Mapping[str, str]) -> dict:
    """The normalized columns of one raw record, as the mapping reads them; absent fields are left out."""
    out = {}
    for column, field in field_map.items():
        value = mapping.lookup(data, field)
        if not mapping.is_missing(value):
            out[column] = value
    return out


def normalize_record(data: Mapping, field_map: Mapping[str, str]) -> tuple[dict | None, str | None]:
    """(normalized row, None) for a valid record, or (None, reason) naming each bad field."""
    try:
        return SCHEMA.load(mapped_fields(data, field_map)), None
    except ValidationError as exc:
        return None, reason(exc.messages, field_map)


def reason(messages: Mapping, field_map: Mapping[str, str]) -> str:
    parts = []
    for column in sorted(messages, key=lambda c: COLUMN_ORDER.get(c, 99)):
        field = field_map.get(column, column)
        label = column if field == column else f"{column} (field {field!r})"
        parts.append(f"{label}: {'; '.join(messages[column])}")
    return "; ".join(parts)


def input_key(field_map: Mapping[str, str]) -> str:
    """Fingerprint of the mapping and the rules: part of each row's input hash."""
    text = json.dumps({"mapping": field_map, "rules": RULES_VERSION}, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class Normalization:
    """The rules applied with one (validated) mapping: what normalize needs, computed once per source."""

    def __init__(self, field_map: Mapping[str, str]):
        self.field_map = dict(field_map)
        self.input_key = input_key(self.field_map)
        # the parameters of sql/pipeline.sql's normalize_fast: the field feeding each column, and what a trim removes
        self.fast_path_params = {
            "edge_space": SPACE_CHARACTERS,
            **{f"{column}_field": self.field_map.get(column) for column in mapping.COLUMNS},
        }

    def normalize(self, data: Mapping) -> tuple[tuple | None, str | None]:
        """(the normalized columns in mapping.COLUMNS order, None) for a valid record, or (None, reason)."""
        row, problem = normalize_record(data, self.field_map)
        return (None, problem) if row is None else (tuple(row[column] for column in mapping.COLUMNS), None)
