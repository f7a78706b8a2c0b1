"""The normalization rules: one marshmallow schema decides what a valid normalized record is.

Normalization(mapping) is what the pipeline uses: the rules for one mapping, as the SQL fast path's parameters,
the input key and the schema's validation of a record.
"""

import decimal
import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping

from marshmallow import Schema, ValidationError, fields

from sluice import mapping

# Bump when the rules change, so every record is normalized again by the next run.
# 2: dotted paths index lists (tags.0); records the fast path read otherwise are redone
# 3: numbers are read as Decimal: a number in a text column keeps its digits (12345678901234567890.12, not 1.2e+19)
RULES_VERSION = "3"
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Whitespace as str.strip() sees it, for the SQL fast path: a value with any of it at either end (one that
# btrim() with these characters would change) is left to the schema, which trims it.
SPACE_CHARACTERS = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def _integer(spelling: str) -> int | decimal.Decimal:
    # past Python's limit on the digits of an int (json.loads would refuse it), a Decimal: jsonb writes 1e400 out
    return int(spelling) if len(spelling) <= 4000 else decimal.Decimal(spelling)


# JSON as normalize reads a record: every number exactly as written (the text of a jsonb value has all its digits)
_DECODER = json.JSONDecoder(parse_float=decimal.Decimal, parse_int=_integer)


def read_json(text: str):
    """A record's JSON text as the schema reads it: decimals as Decimal, integers as int, no digit lost."""
    return _DECODER.decode(text)


_SHORT = decimal.Context(prec=15)


def _shown(value) -> str:
    """A value in a reason: a string quoted, a number as written (shortened when it is very long)."""
    if isinstance(value, str):
        return repr(value)
    text = format(value, "f") if isinstance(value, decimal.Decimal) else str(value)
    # 10**400 (jsonb writes 1e400 out in full) as 1e+400
    return text if len(text) <= 40 else format(_SHORT.create_decimal(value).normalize(_SHORT), "g")


class Text(fields.Field):
    """A string, or a number written as one (every digit of it); surrounding whitespace trimmed, empty means
    missing."""

    default_error_messages = {"invalid": "is {kind}, expected text", "required": "missing", "null": "missing"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float, decimal.Decimal)):
            raise self.make_error("invalid", kind=mapping.kind(value))
        # a Decimal as jsonb writes it out (no exponent), as the SQL fast path reads the text of a number
        text = (format(value, "f") if isinstance(value, decimal.Decimal) else str(value)).strip()
        if not text:
            if self.required:
                raise self.make_error("required")
            return None
        return text


class Number(fields.Field):
    """A finite float from a JSON number or a plain decimal string ('1,234', 'NaN' and '1_000' are refused): the
    float nearest the number as written (a Decimal is rounded once, as PostgreSQL rounds the text of one)."""

    default_error_messages = {
        "invalid": "{value} is not a number",
        "type": "is {kind}, expected a number",
        "finite": "{value} is not a finite number",
        "required": "missing",
        "null": "missing",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float, decimal.Decimal)):
            raise self.make_error("type", kind=mapping.kind(value))
        if isinstance(value, str):
            text = value.strip()
            if not text:
                raise self.make_error("required")
            if not _DECIMAL.fullmatch(text):
                if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                    raise self.make_error("finite", value=_shown(value))
                raise self.make_error("invalid", value=_shown(value))
            original, value = value, text
        else:
            original = value
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            raise self.make_error("finite", value=_shown(original)) from None
        if not math.isfinite(number):
            raise self.make_error("finite", value=_shown(original))
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

    def normalize_json(self, text: str) -> tuple[tuple | None, str | None]:
        """normalize() of a record's JSON text, its numbers read without losing a digit (read_json)."""
        return self.normalize(read_json(text))
