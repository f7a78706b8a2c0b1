"""The normalization rules: one marshmallow schema decides what a valid normalized record is.

Normalization(mapping, fields) is what the pipeline uses: the rules for one mapping and a source's declared fields
(sources.Field), as the SQL fast path's parameters, the input key and the schema's validation of a record.
"""

import datetime
import decimal
import functools
import hashlib
import json
import math
import operator
import re
import sys
from collections.abc import Mapping
from json.encoder import encode_basestring

from marshmallow import Schema, ValidationError, fields

from sluice import checks, mapping

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


class _Typed(fields.Field):
    """A declared field's value: absent, null or a string empty after trimming is missing (JSON null in
    attributes, a reject when the field is required); anything else is typed by _typed or refused."""

    default_error_messages = {"required": "missing", "null": "missing"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            text = value.strip()
            if not text:
                if self.required:
                    raise self.make_error("required")
                return None
            return self._typed_text(value, text)
        return self._typed(value)

    def _typed_text(self, value: str, text: str):
        raise self.make_error("type", kind="a string")

    def _typed(self, value):
        raise self.make_error("type", kind=mapping.kind(value))


# PostgreSQL's 64-bit integer, the typed view's bigint
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(r"[+-]?[0-9]+")
# numeric's limits in PostgreSQL: digits before and after the point (a longer one fails the whole COPY)
NUMERIC_INTEGER_DIGITS, NUMERIC_FRACTION_DIGITS = 131072, 16383


class Integer(_Typed):
    """A JSON integer or a string of one (ASCII digits, an optional sign, trimmed), within 64 bits: the typed view
    types it bigint. 1.0, 1e3 and '1,000' are refused: they are not integers as written."""

    default_error_messages = {"type": "is {kind}, expected an integer", "invalid": "{value} is not an integer",
                              "range": "{value} is out of the 64-bit integer range"}

    def _typed_text(self, value, text):
        if len(text) < 19 and text.isascii() and text.isdigit():
            return int(text)  # the common case: fewer than 19 ASCII digits are within 64 bits
        if not _INTEGER.fullmatch(text):
            raise self.make_error("invalid", value=_shown(value))
        if len(text.lstrip("+-").lstrip("0")) > 19:  # beyond 64 bits, and no 5,000-digit int() for it
            raise self.make_error("range", value=_shown(value))
        return self._typed(int(text), value)

    def _typed(self, value, original=None):
        if isinstance(value, decimal.Decimal) and value.is_finite() and value.as_tuple().exponent == 0:
            raise self.make_error("range", value=_shown(value))  # an integer of over 4,000 digits (read_json)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, (float, decimal.Decimal)):
                raise self.make_error("invalid", value=_shown(value))
            raise self.make_error("type", kind=mapping.kind(value))
        if not _INT64[0] <= value <= _INT64[1]:
            raise self.make_error("range", value=_shown(value if original is None else original))
        return value


class Numeric(_Typed):
    """A JSON number or a plain decimal string (trimmed; '1,234', 'NaN' and '1_000' refused), kept exactly as a
    Decimal: every digit, the scale as written (1.50 stays 1.50), as PostgreSQL's numeric keeps it."""

    default_error_messages = {"type": "is {kind}, expected a number", "invalid": "{value} is not a number",
                              "finite": "{value} is not a finite number",
                              "range": "{value} is beyond PostgreSQL numeric's range"}

    def _typed_text(self, value, text):
        if not _DECIMAL.fullmatch(text):
            if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise self.make_error("finite", value=_shown(value))
            raise self.make_error("invalid", value=_shown(value))
        if len(text) < 1000 and "e" not in text and "E" not in text:
            # fewer than 1,000 digits and no exponent: within numeric's range (_checked's tests cost 1 µs)
            return decimal.Decimal(text)
        return self._checked(decimal.Decimal(text), value)

    def _typed(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
            raise self.make_error("type", kind=mapping.kind(value))
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.make_error("finite", value=_shown(value))
            value = decimal.Decimal(repr(value))  # the shortest text of the float, as JSON writes it
        return self._checked(decimal.Decimal(value), value)

    def _checked(self, number: decimal.Decimal, original) -> decimal.Decimal:
        if not number.is_finite():
            raise self.make_error("finite", value=_shown(original))
        exponent = number.as_tuple().exponent
        if number.adjusted() >= NUMERIC_INTEGER_DIGITS or -exponent > NUMERIC_FRACTION_DIGITS:
            raise self.make_error("range", value=_shown(original))
        return number


class Boolean(_Typed):
    """JSON true/false, or the strings true/false in any case (trimmed). 1/0, yes/no, t/f are refused: a column
    of 0s and 1s is as likely a count as a flag, and yes/no depend on the language; declare such a field integer or
    text and read it as you mean it."""

    default_error_messages = {"type": "is {kind}, expected true or false",
                              "invalid": "{value} is not true or false"}

    def _typed_text(self, value, text):
        if text.isascii() and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise self.make_error("invalid", value=_shown(value))

    def _typed(self, value):
        if isinstance(value, bool):
            return value
        raise self.make_error("type", kind=mapping.kind(value))


_TIMESTAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
                        r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))?")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# The common forms, read in C by datetime.fromisoformat (8 µs → 1 µs a value): 'T', whole seconds, 'Z' or an offset
# whose minutes are below 60 (fromisoformat takes +05:60 as 06:00). Whatever fromisoformat refuses in them (a leap
# second, 30 February, year 0, an offset of a day) and a moment beyond UTC's years take the general reading, which
# says why.
_COMMON_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-][0-9]{2}:[0-5][0-9])")


class Timestamp(_Typed):
    """An ISO 8601 date-time string: YYYY-MM-DD, 'T' or a space, HH:MM[:SS[.fraction]], then 'Z' or ±HH:MM. A
    time without an offset is read as UTC. Kept as YYYY-MM-DDTHH:MM:SS[.ffffff]Z in UTC, the fraction (rounded
    half to even to microseconds, PostgreSQL's precision) only when it is not zero. A leap second (:60) is refused:
    neither Python nor this form can keep it."""

    default_error_messages = {"type": "is {kind}, expected an ISO 8601 date-time",
                              "invalid": "{value} is not an ISO 8601 date-time (YYYY-MM-DDTHH:MM:SS, 'Z' or "
                                         "±HH:MM)",
                              "date": "{value} is not a valid date-time",
                              "leap": "{value} is a leap second, which is not kept",
                              "range": "{value} is out of range in UTC"}

    def _typed_text(self, value, text):
        common = common_timestamp(text)
        if common is not None:
            return common
        match = _TIMESTAMP.fullmatch(text)
        if not match:
            raise self.make_error("invalid", value=_shown(value))
        year, month, day, hour, minute, second, fraction, _, sign, offset_hours, offset_minutes = match.groups()
        if second == "60":
            raise self.make_error("leap", value=_shown(value))
        try:
            offset = datetime.timedelta(hours=int(offset_hours or 0), minutes=int(offset_minutes or 0))
            if int(offset_minutes or 0) > 59 or offset >= datetime.timedelta(days=1):
                raise ValueError("offset")
            zone = datetime.timezone(-offset if sign == "-" else offset)
            moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                                       tzinfo=zone)
        except ValueError:
            raise self.make_error("date", value=_shown(value)) from None
        try:
            if fraction:
                micro = (decimal.Decimal(f"0.{fraction}") * 1_000_000).to_integral_value(decimal.ROUND_HALF_EVEN)
                moment += datetime.timedelta(microseconds=int(micro))
            utc = moment.astimezone(datetime.timezone.utc)
        except OverflowError:
            raise self.make_error("range", value=_shown(value)) from None
        return format_timestamp(utc)


def common_timestamp(text: str) -> str | None:
    """A trimmed date-time of a common form (_COMMON_TIMESTAMP) as Timestamp keeps it; None: another form, or one
    that only the general reading can judge."""
    if _COMMON_TIMESTAMP.fullmatch(text):
        try:
            moment = datetime.datetime.fromisoformat(text)
            if text[-1] == "Z":
                return text  # already as kept: whole seconds in UTC
            return f"{moment.astimezone(datetime.timezone.utc).isoformat()[:19]}Z"
        except (ValueError, OverflowError):
            pass  # the general reading words the error
    return None


def format_timestamp(moment: datetime.datetime) -> str:
    """A UTC time as attributes keep it (strftime's %Y would drop a leading zero of years before 1000)."""
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}")
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else f"{text}Z"


class Date(_Typed):
    """A YYYY-MM-DD string naming a real day (2026-02-30 is refused); kept as written."""

    default_error_messages = {"type": "is {kind}, expected a date", "invalid": "{value} is not a date (YYYY-MM-DD)",
                              "date": "{value} is not a valid date"}

    def _typed_text(self, value, text):
        match = _DATE.fullmatch(text)
        if not match:
            raise self.make_error("invalid", value=_shown(value))
        try:
            datetime.date(*map(int, match.groups()))
        except ValueError:
            raise self.make_error("date", value=_shown(value)) from None
        return text


class Json(_Typed):
    """Any value as the source sent it (a string untrimmed); only a missing one (absent, null, blank) is null."""

    def _typed_text(self, value, text):
        return value

    def _typed(self, value):
        return value


# a declared field's type -> the marshmallow field that reads it (sources.FIELD_TYPES)
FIELD_CLASSES = {"text": Text, "integer": Integer, "numeric": Numeric, "boolean": Boolean,
                 "timestamp": Timestamp, "date": Date, "json": Json}


class NormalizedRecordSchema(Schema):
    """The unified columns when the mapping maps them all (Normalization builds one per mapping and fields)."""

    source_id = Text(required=True)
    name = Text(required=True)
    value = Number(required=True)
    description = Text(load_default=None, allow_none=True)


COLUMN_ORDER = {name: index for index, name in enumerate(mapping.COLUMNS)}


def _column(column: str, mapped: bool) -> fields.Field:
    """A unified column's field: required when mapped (source_id always is), null when not; description optional."""
    kind = Number if column == "value" else Text
    if mapped and column != "description":
        return kind(required=True)
    return kind(load_default=None, allow_none=True)


def _declared(spec) -> fields.Field:
    kind = FIELD_CLASSES[spec.type]
    return kind(required=True) if spec.required else kind(load_default=None, allow_none=True)


def _apply_checks(field: fields.Field, found: list, field_type: str) -> None:
    """Add a field's row-level checks to it: not_null makes it required (its message naming the check), the others
    validate its loaded value (sluice.checks.validators)."""
    for check in found:
        if check.check == "not_null":
            field.required, field.allow_none = True, False
            message = f"missing (fails check {check.name})"
            field.error_messages = {**field.error_messages, "required": message, "null": message}
        field.validators = [*field.validators, *checks.validators(check, field_type)]


def normalize_record(data: Mapping, field_map: Mapping[str, str]) -> tuple[dict | None, str | None]:
    """(normalized columns, None) for a valid record, or (None, reason) naming each bad field: the rules of a
    mapping without declared fields."""
    normalization = _plain(tuple(field_map.items()))
    row, problem = normalization.normalize(data)
    return (None, problem) if row is None else (dict(zip(mapping.COLUMNS, row)), None)


@functools.lru_cache(maxsize=64)
def _plain(items: tuple) -> "Normalization":
    return Normalization(dict(items))


def reason(messages: Mapping, labels: Mapping[str, str], order: Mapping[str, int] = COLUMN_ORDER) -> str:
    """The reject reason: each bad field, as `column (field 'path')` when its source field is named otherwise."""
    parts = []
    for column in sorted(messages, key=lambda c: order.get(c, 99)):
        field = labels.get(column, column)
        label = column if field == column else f"{column} (field {field!r})"
        parts.append(f"{label}: {'; '.join(messages[column])}")
    return "; ".join(parts)


def input_key(field_map: Mapping[str, str], declared: Mapping | None = None, row_checks=()) -> str:
    """Fingerprint of the mapping, the declared fields, the row-level checks and the rules: part of each row's input
    hash, so a changed declaration or check re-normalizes the source. A source without fields or checks keeps the
    key it had before they existed."""
    key = {"mapping": field_map, "rules": RULES_VERSION}
    if declared:
        # the order matters too: it is the typed view's
        key["fields"] = [[name, spec.type, spec.path, spec.required] for name, spec in declared.items()]
    if row_checks:
        key["checks"] = sorted((check.to_entry() for check in row_checks), key=lambda entry: json.dumps(entry))
    text = json.dumps(key, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def dumps(value) -> str:
    """JSON text with Decimals written as the numbers they are, every digit (json.dumps cannot)."""
    if isinstance(value, decimal.Decimal):
        return str(value)  # finite (Numeric refuses the rest); 1E+5 and 0E-7 are JSON numbers too
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {dumps(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(dumps, value)) + "]"
    return json.dumps(value)


class Normalization:
    """The rules applied with one (validated) mapping and a source's declared fields (name -> sources.Field):
    what normalize needs, computed once per source."""

    def __init__(self, field_map: Mapping[str, str], declared: Mapping | None = None, row_checks=()):
        self.field_map = dict(field_map)
        self.fields = dict(declared or {})
        # the source's row-level checks (sluice.checks): rules of their fields, so a failing record is rejected
        # with the check as its reason
        self.row_checks = tuple(row_checks)
        columns = {column: _column(column, column in self.field_map) for column in mapping.COLUMNS}
        typed = {name: _declared(spec) for name, spec in self.fields.items()}
        self._typed = typed
        for name, field in {**columns, **typed}.items():
            _apply_checks(field, [check for check in self.row_checks if check.field == name],
                          checks.COLUMN_TYPES.get(name) or self.fields[name].type)
        # attributes named by position, each reading its name (data_key): a field called `load` or `fields`
        # must not shadow the Schema's own attributes
        self._names = [*columns, *typed]
        self.schema = Schema.from_dict({f"field_{index}": field for index, field in
                                        enumerate(self._set_keys({**columns, **typed}))})()
        self._paths = {**self.field_map, **{name: spec.path for name, spec in self.fields.items()}}
        self._order = {name: index for index, name in enumerate([*mapping.COLUMNS, *self.fields])}
        self.input_key = input_key(self.field_map, self.fields, self.row_checks)
        # the fast paths decide the types, not the checks: with row-level checks every record takes the schema
        self.fast_path = not self.row_checks
        # the parameters of sql/pipeline.sql's normalize_fast: the field feeding each column, what a trim removes
        self.fast_path_params = {
            "edge_space": SPACE_CHARACTERS,
            **{f"{column}_field": self.field_map.get(column) for column in mapping.COLUMNS},
        }
        # the declared fields typed while staging (AttributeTyper); None: none declared, or checks to run
        self.typer = AttributeTyper(self) if self.fields and self.fast_path else None

    def normalize(self, data: Mapping) -> tuple[tuple | None, str | None]:
        """(the normalized columns in mapping.COLUMNS order and the attributes dict, None) for a valid record, or
        (None, reason)."""
        values = {}
        for name, path in self._paths.items():
            value = mapping.lookup(data, path)
            if not mapping.is_missing(value):
                values[name] = value
        try:
            loaded = self.schema.load(values)
        except ValidationError as exc:
            return None, reason(exc.messages, self._paths, self._order)
        row = {name: loaded[f"field_{index}"] for index, name in enumerate(self._names)}
        return (*(row[column] for column in mapping.COLUMNS), {name: row[name] for name in self.fields}), None

    @staticmethod
    def _set_keys(named: dict) -> list:
        for name, field in named.items():
            field.data_key = name
        return list(named.values())

    def normalize_json(self, text: str) -> tuple[tuple | None, str | None]:
        """normalize() of a record's JSON text, its numbers read without losing a digit (read_json)."""
        return self.normalize(read_json(text))


class AttributeTyper:
    """A source's declared fields typed by ingest, one record at a time: the record's attributes as the JSON text
    normalize loads (the same object the schema's load gives, as dumps writes it), or None when the record is left
    to the schema: a value a field refuses, a required one missing, or a value the reader decoded other than the
    schema reads it (a float, an object or a list: the API's decoder reads numbers as floats, the schema as
    Decimals). Each value is read by its field's own _deserialize (the schema's fields, without marshmallow's
    machinery per value and per record), so there is one definition of the types. key: the Normalization's
    input_key, which normalize checks before it trusts staged attributes."""

    def __init__(self, normalization: "Normalization"):
        self.key = normalization.input_key
        self._specs = normalization.fields
        # per field: its key in the object, its path, its reading (what field.deserialize does for a present value
        # of a field without validators: no checks here) and whether it is required
        self._fields = [(f"{json.dumps(name)}:", spec.path, field._deserialize, field.required)
                        for name, spec in normalization.fields.items()
                        for field in (normalization._typed[name],)]

    @staticmethod
    def _object(values, fields) -> str | None:
        parts = []
        for value, (prefix, _, read, required) in zip(values, fields):
            if value is None or value is mapping.MISSING:
                if required:
                    return None
                parts.append(prefix + "null")
                continue
            kind = type(value)
            if kind is not str and kind is not int and kind is not bool:
                return None
            try:
                typed = read(value, None, None)
            except ValidationError:
                return None
            kind = type(typed)
            if kind is str:
                parts.append(prefix + encode_basestring(typed))  # json's own string writer (C)
            elif kind is bool:
                parts.append(prefix + ("true" if typed else "false"))
            elif kind is int or kind is decimal.Decimal:
                parts.append(prefix + str(typed))
            else:
                parts.append(prefix + dumps(typed))
        return "{" + ",".join(parts) + "}"

    def record(self, record: Mapping) -> str | None:
        """The attributes of a decoded record (its fields found by mapping.lookup), or None."""
        return self._object([mapping.lookup(record, path) for _, path, _, _ in self._fields], self._fields)

    def rows_reader(self, header: list[str]):
        """record() for a block of rows of a CSV with this header (lists of strings of the header's length): the
        attributes of each row, typed a column at a time. A field whose path is no column is missing (a dotted path
        cannot enter a string). A column whose every value is spelled as its type writes it (_CANONICAL: one
        regular expression over the column joined) is written as it is; any other column is read value by value,
        a canonical value as it is and the rest by the field's own reading, written by its type's writer
        (_CSV_WRITERS)."""
        plan = []
        for (prefix, path, read, required), spec in zip(self._fields, self._specs.values()):
            if path in header:
                plan.append((header.index(path), _ColumnReader(spec.type, read)))
            elif required:
                return lambda rows: [None] * len(rows)  # a required field no row has: the schema rejects each
            else:
                plan.append((None, None))
        template = "{" + ",".join(f"{prefix.replace('%', '%%')}%s" for prefix, _, _, _ in self._fields) + "}"

        # the declared fields' columns only, in the plan's order
        wanted = [index for index, _ in plan if index is not None]
        pick = operator.itemgetter(*wanted) if wanted else None

        def attributes(rows: list[list[str]]) -> list[str | None]:
            columns = iter([tuple(map(pick, rows))]) if len(wanted) == 1 else zip(*map(pick, rows)) if wanted \
                else iter(())
            refused: set[int] = set()  # the rows left to the schema
            texts = [["null"] * len(rows) if reader is None else reader(next(columns), refused)
                     for _, reader in plan]
            typed = list(map(template.__mod__, zip(*texts)))
            for row in refused:
                typed[row] = None
            return typed

        return attributes


# A value of these types spelled so (untrimmed) is its own JSON text as its field reads and _CSV_WRITERS writes it:
# an integer without sign, leading zero or more than 18 digits (int() gives it back), a decimal without exponent,
# '+', leading zeros or more than 5 zeros after '0.' (str() of its Decimal gives it back), a boolean in lower case,
# a date-time in UTC to the second with a day every month has (or 29-31 where the month has it; 29 February is read)
# and a date of the same days. Anything else, valid or not, is read by the field.
_DAY = (r"(?!0000)[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
        r"|(?:0[13578]|1[02])-31)")
_CANONICAL = {
    "integer": r"-?[1-9][0-9]{0,17}|0",
    "numeric": r"-?(?:[1-9][0-9]{0,500}(?:\.[0-9]{1,400})?|0(?:\.0{0,5}[1-9][0-9]{0,400})?)",
    "boolean": r"true|false",
    "timestamp": _DAY + r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z",
    "date": _DAY,
}


class _ColumnReader:
    """One declared field's JSON texts for a column of CSV strings (AttributeTyper.rows_reader): the rows whose
    value its reading refuses (a blank one too, when the field is required) are added to `refused`."""

    def __init__(self, field_type: str, read):
        self._read, self._type = read, field_type
        self._write = _CSV_WRITERS[field_type]
        canonical = _CANONICAL.get(field_type)
        # the column joined by newlines matches when each value is canonical and holds no newline of its own
        self._whole = canonical and re.compile(f"(?:{canonical})(?:\n(?:{canonical}))*").fullmatch
        self._one = canonical and re.compile(canonical).fullmatch
        # what a canonical value becomes: dates and date-times are JSON strings (ASCII digits, '-', ':', 'T', 'Z')
        self._quoted = field_type in ("timestamp", "date")

    def __call__(self, values: tuple[str, ...], refused: set[int]) -> list[str]:
        if self._whole is None:  # text and json: the string as the field keeps it (text trimmed), unless blank
            stripped = list(map(str.strip, values))
            texts = list(map(encode_basestring, stripped if self._type == "text" else values))
            if "" in stripped:
                for row in [row for row, value in enumerate(stripped) if not value]:
                    texts[row] = self._slow(row, values[row], refused)
            return texts
        joined = "\n".join(values)
        if self._whole(joined) and joined.count("\n") == len(values) - 1:  # no value held a newline of its own
            return [f'"{value}"' for value in values] if self._quoted else list(values)
        one = self._one
        if self._type == "timestamp":
            texts = []
            for row, value in enumerate(values):
                # another common form (an offset to convert) read without the field's machinery per value
                kept = value if one(value) else common_timestamp(value)
                texts.append(self._slow(row, value, refused) if kept is None else f'"{kept}"')
            return texts
        if self._quoted:
            return [f'"{value}"' if one(value) else self._slow(row, value, refused) for row, value in enumerate(values)]
        return [value if one(value) else self._slow(row, value, refused) for row, value in enumerate(values)]

    def _slow(self, row: int, value: str, refused: set[int]) -> str:
        try:
            typed = self._read(value, None, None)
        except ValidationError:
            refused.add(row)
            return "null"
        return "null" if typed is None else self._write(typed)


# what the field of each type reads from a string, as JSON text (timestamps and dates are ASCII digits, '-', ':',
# 'T', '.' and 'Z', which JSON need not escape)
_CSV_WRITERS = {"text": encode_basestring, "integer": str, "numeric": str, "boolean": lambda value: "true" if value
                else "false", "timestamp": '"{}"'.format, "date": '"{}"'.format, "json": encode_basestring}
