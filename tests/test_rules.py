"""Normalization rules: what becomes a normalized row, and the reason a user reads when it does not."""

import decimal

import pytest

from sluice import rules, settings, sources

IDENTITY = {"source_id": "id", "name": "name", "value": "value", "description": "description"}
API = settings.DEFAULT_API_MAPPING  # name <- title, value <- userId, description <- body


def record(**fields):
    return {"id": "k1", "name": "widget", "value": "1", **fields}


@pytest.mark.parametrize("raw, expected", [
    ("12.5", 12.5),
    (" 7 ", 7.0),
    (3, 3.0),
    (2.25, 2.25),
    ("-1e3", -1000.0),
    ("+4", 4.0),
    (".5", 0.5),
    ("0", 0.0),
])
def test_value_accepts_numbers_and_plain_decimal_strings(raw, expected):
    row, problem = rules.normalize_record(record(value=raw), IDENTITY)
    assert problem is None
    assert row["value"] == expected and isinstance(row["value"], float)


@pytest.mark.parametrize("raw, reason", [
    ("abc", "value: 'abc' is not a number"),
    ("1,234", "value: '1,234' is not a number"),
    ("1_000", "value: '1_000' is not a number"),
    ("0x10", "value: '0x10' is not a number"),
    ("12 kg", "value: '12 kg' is not a number"),
    ("NaN", "value: 'NaN' is not a finite number"),
    ("Infinity", "value: 'Infinity' is not a finite number"),
    ("-inf", "value: '-inf' is not a finite number"),
    ("1e400", "value: '1e400' is not a finite number"),
    (float("nan"), "value: nan is not a finite number"),
    (True, "value: is a boolean, expected a number"),
    ({"a": 1}, "value: is an object, expected a number"),
    ([1], "value: is a list, expected a number"),
    ("", "value: missing"),
    ("   ", "value: missing"),
    (None, "value: missing"),
])
def test_value_rejects_non_numbers_with_readable_reason(raw, reason):
    assert rules.normalize_record(record(value=raw), IDENTITY) == (None, reason)


def test_integer_too_large_for_a_float_is_rejected_not_raised():
    row, problem = rules.normalize_record(record(value=10**400), IDENTITY)
    assert row is None
    assert problem == "value: 1e+400 is not a finite number"  # not its 401 digits


def test_decimals_keep_their_digits_in_text_and_round_once_to_a_float():
    data = rules.read_json('{"id": 12345678901234567890, "name": 12345678901234567890.12,'
                           ' "value": 0.1000000000000000000000000001}')
    assert rules.normalize_record(data, IDENTITY) == ({
        "source_id": "12345678901234567890", "name": "12345678901234567890.12", "value": 0.1, "description": None}, None)


def test_value_missing_from_record():
    data = record()
    del data["value"]
    assert rules.normalize_record(data, IDENTITY) == (None, "value: missing")


@pytest.mark.parametrize("name, reason", [
    ("", "name: missing"),
    ("  \t", "name: missing"),
    (None, "name: missing"),
    ({"first": "a"}, "name: is an object, expected text"),
    (["a", "b"], "name: is a list, expected text"),
    (False, "name: is a boolean, expected text"),
])
def test_name_rejected_with_readable_reason(name, reason):
    assert rules.normalize_record(record(name=name), IDENTITY) == (None, reason)


def test_name_absent_is_missing():
    assert rules.normalize_record({"id": "k1", "value": 1}, IDENTITY) == (None, "name: missing")


@pytest.mark.parametrize("name, expected", [
    (42, "42"),
    (1.5, "1.5"),
    ("  padded  ", "padded"),
    ("Zürich", "Zürich"),
])
def test_name_accepts_text_and_numbers_as_text(name, expected):
    row, problem = rules.normalize_record(record(name=name), IDENTITY)
    assert problem is None
    assert row["name"] == expected


@pytest.mark.parametrize("fields, expected", [
    ({}, None),
    ({"description": None}, None),
    ({"description": ""}, None),
    ({"description": "  two\nlines  "}, "two\nlines"),
    ({"description": 7}, "7"),
])
def test_description_is_optional(fields, expected):
    row, problem = rules.normalize_record(record(**fields), IDENTITY)
    assert problem is None
    assert row["description"] == expected


def test_description_of_wrong_type_is_rejected():
    assert rules.normalize_record(record(description={"x": 1}), IDENTITY) == (
        None, "description: is an object, expected text")


def test_valid_record_normalizes_every_column():
    row, problem = rules.normalize_record({"id": 17, "title": " Canal ", "userId": 2, "body": "text"}, API)
    assert problem is None
    assert row == {"source_id": "17", "name": "Canal", "value": 2.0, "description": "text"}


def test_fields_outside_the_mapping_are_ignored():
    row, problem = rules.normalize_record(record(extra={"anything": [1]}, name2=True), IDENTITY)
    assert problem is None
    assert set(row) == {"source_id", "name", "value", "description"}


@pytest.mark.parametrize("data, reason", [
    ({"id": 1, "userId": 1}, "name (field 'title'): missing"),
    ({"id": 1, "title": "t", "userId": "abc"}, "value (field 'userId'): 'abc' is not a number"),
    ({"id": 1, "title": "t", "userId": 1, "body": [1]}, "description (field 'body'): is a list, expected text"),
    ({"id": " ", "title": "t", "userId": 1}, "source_id (field 'id'): missing"),
    ({"userId": "x", "title": {}},
     "source_id (field 'id'): missing; name (field 'title'): is an object, expected text; "
     "value (field 'userId'): 'x' is not a number"),
])
def test_reason_names_the_source_field_when_the_mapping_renames_it(data, reason):
    assert rules.normalize_record(data, API) == (None, reason)


def test_dotted_mapping_reads_nested_fields_and_names_them_in_reasons():
    field_map = {"source_id": "user.id", "name": "user.name", "value": "stats.score"}
    row, problem = rules.normalize_record({"user": {"id": 3, "name": "ann"}, "stats": {"score": "9"}}, field_map)
    assert problem is None and row == {"source_id": "3", "name": "ann", "value": 9.0, "description": None}
    assert rules.normalize_record({"user": {"id": 3}}, field_map) == (
        None, "name (field 'user.name'): missing; value (field 'stats.score'): missing")


def test_schema_can_be_used_directly():
    row = rules.NormalizedRecordSchema().load({"source_id": 5, "name": "n", "value": "1.5"})
    assert row == {"source_id": "5", "name": "n", "value": 1.5, "description": None}


def test_input_key_changes_when_the_mapping_changes():
    base = rules.input_key(API)
    assert rules.input_key({**API, "value": "id"}) != base
    assert rules.input_key({key: API[key] for key in ("source_id", "name", "value")}) != base
    assert rules.input_key(IDENTITY) != base


def test_input_key_ignores_key_order_and_is_stable():
    reordered = dict(reversed(list(API.items())))
    assert rules.input_key(reordered) == rules.input_key(dict(API))
    assert rules.input_key(API) == rules.input_key(API)


# Declared fields (issue 23): one marshmallow field per type, by the same Normalization as the unified columns.

def typed(kind: str, value, *, required: bool = False):
    """(attributes, reason) of a record whose declared field `f` of type `kind` is `value` (absent: ...)."""
    data = {"id": "k1"} if value is ... else {"id": "k1", "f": value}
    normalization = rules.Normalization({"source_id": "id"}, {"f": sources.Field(kind, "f", required)})
    row, problem = normalization.normalize(data)
    return (None if row is None else row[-1]["f"]), problem


@pytest.mark.parametrize("kind, raw, expected", [
    ("text", " padded ", "padded"),
    ("text", 12345678901234567890, "12345678901234567890"),
    ("integer", 12, 12),
    ("integer", " 12 ", 12),
    ("integer", "+7", 7),
    ("integer", "-0042", -42),
    ("integer", "9223372036854775807", 2**63 - 1),
    ("integer", -(2**63), -(2**63)),
    ("numeric", "12345678901234567890.10", decimal.Decimal("12345678901234567890.10")),
    ("numeric", decimal.Decimal("0.1000000000000000000000000001"), decimal.Decimal("0.1000000000000000000000000001")),
    ("numeric", 7, decimal.Decimal(7)),
    ("numeric", " -1e3 ", decimal.Decimal("-1E+3")),
    ("numeric", 2.5, decimal.Decimal("2.5")),
    ("boolean", True, True),
    ("boolean", "FALSE", False),
    ("boolean", " True ", True),
    ("timestamp", "2026-01-01T10:00:00+05:30", "2026-01-01T04:30:00Z"),
    ("timestamp", "2026-01-01 10:00", "2026-01-01T10:00:00Z"),  # no offset: UTC
    ("timestamp", "2026-03-01T00:00:00.5-01:00", "2026-03-01T01:00:00.500000Z"),
    ("timestamp", "2026-12-31T23:59:59.9999996Z", "2027-01-01T00:00:00Z"),  # rounded to microseconds
    ("timestamp", "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00Z"),
    ("timestamp", "0999-06-01T00:00:00Z", "0999-06-01T00:00:00Z"),
    ("date", "2024-02-29", "2024-02-29"),
    ("json", {"a": [1, None]}, {"a": [1, None]}),
    ("json", " spaced ", " spaced "),  # as sent
    ("json", 0, 0),
])
def test_each_type_reads_its_values(kind, raw, expected):
    value, problem = typed(kind, raw)
    assert problem is None
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("kind, raw, reason", [
    ("text", True, "f: is a boolean, expected text"),
    ("text", {"a": 1}, "f: is an object, expected text"),
    ("integer", "1e3", "f: '1e3' is not an integer"),
    ("integer", "1,000", "f: '1,000' is not an integer"),
    ("integer", decimal.Decimal("1.0"), "f: 1.0 is not an integer"),
    ("integer", 1.5, "f: 1.5 is not an integer"),
    ("integer", "٣", "f: '٣' is not an integer"),  # a unicode digit: int() would take it, PostgreSQL not
    ("integer", 2**63, "f: 9223372036854775808 is out of the 64-bit integer range"),
    ("integer", "-9223372036854775809", "f: '-9223372036854775809' is out of the 64-bit integer range"),
    ("integer", "1" * 5000, "is out of the 64-bit integer range"),
    ("integer", True, "f: is a boolean, expected an integer"),
    ("numeric", "NaN", "f: 'NaN' is not a finite number"),
    ("numeric", "-Infinity", "f: '-Infinity' is not a finite number"),
    ("numeric", "1,5", "f: '1,5' is not a number"),
    ("numeric", "1e200000", "f: '1e200000' is beyond PostgreSQL numeric's range"),
    ("numeric", [1], "f: is a list, expected a number"),
    ("boolean", 1, "f: is an integer, expected true or false"),
    ("boolean", "yes", "f: 'yes' is not true or false"),
    ("boolean", "1", "f: '1' is not true or false"),
    ("timestamp", "2026-02-30T00:00:00Z", "f: '2026-02-30T00:00:00Z' is not a valid date-time"),
    ("timestamp", "2016-12-31T23:59:60Z", "f: '2016-12-31T23:59:60Z' is a leap second, which is not kept"),
    ("timestamp", "2026-01-01", "f: '2026-01-01' is not an ISO 8601 date-time"),
    ("timestamp", "2026-01-01T10:00:00+0530", "is not an ISO 8601 date-time"),
    ("timestamp", "2026-01-01T24:00:00Z", "is not a valid date-time"),
    ("timestamp", "0001-01-01T00:00:00+01:00", "f: '0001-01-01T00:00:00+01:00' is out of range in UTC"),
    ("timestamp", 1767225600, "f: is an integer, expected an ISO 8601 date-time"),
    ("date", "2026-02-30", "f: '2026-02-30' is not a valid date"),
    ("date", "2026-1-5", "f: '2026-1-5' is not a date (YYYY-MM-DD)"),
    ("date", "0000-01-01", "is not a valid date"),
])
def test_each_type_refuses_what_it_cannot_keep_with_a_reason(kind, raw, reason):
    value, problem = typed(kind, raw)
    assert value is None and reason in problem


@pytest.mark.parametrize("kind", sources.FIELD_TYPES)
@pytest.mark.parametrize("raw", [..., None, "", "  "])
def test_a_missing_value_is_null_unless_the_field_is_required(kind, raw):
    assert typed(kind, raw) == (None, None)
    assert typed(kind, raw, required=True) == (None, "f: missing")


def test_the_reason_names_the_declared_field_and_its_source_field_after_the_columns():
    normalization = rules.Normalization({"source_id": "id", "name": "title"}, {
        "seats": sources.Field("integer", "plan.seats", required=True), "active": sources.Field("boolean", "on")})
    assert normalization.normalize({"id": 1, "plan": {"seats": "x"}, "on": "yes"}) == (
        None, "name (field 'title'): missing; seats (field 'plan.seats'): 'x' is not an integer; "
              "active (field 'on'): 'yes' is not true or false")


def test_unmapped_columns_are_null_so_a_source_without_numbers_loads():
    normalization = rules.Normalization({"source_id": "id"}, {"email": sources.Field("text", "email")})
    assert normalization.normalize({"id": 3, "email": "a@b.c", "name": "ignored"}) == (
        ("3", None, None, None, {"email": "a@b.c"}), None)


def test_a_field_may_be_named_like_a_schema_attribute():
    normalization = rules.Normalization({"source_id": "id"}, {"load": sources.Field("integer", "load"),
                                                              "fields": sources.Field("text", "fields")})
    assert normalization.normalize({"id": 1, "load": "3", "fields": "x"})[0][-1] == {"load": 3, "fields": "x"}


def test_the_input_key_covers_the_declared_fields_and_keeps_the_old_key_without_them():
    base = rules.Normalization(IDENTITY)
    assert base.input_key == rules.input_key(IDENTITY)
    keys = {rules.Normalization(IDENTITY, declared).input_key for declared in (
        {"seats": sources.Field("integer", "seats")}, {"seats": sources.Field("numeric", "seats")},
        {"seats": sources.Field("integer", "n")}, {"seats": sources.Field("integer", "seats", True)},
        {"seats": sources.Field("integer", "seats"), "plan": sources.Field("text", "plan")},
        {"plan": sources.Field("text", "plan"), "seats": sources.Field("integer", "seats")})}
    assert len(keys) == 6 and base.input_key not in keys


def test_attributes_are_written_as_json_with_every_digit():
    attributes = {"mrr": decimal.Decimal("12345678901234567890.10"), "n": 1, "tags": ["a", {"b": None}]}
    assert rules.dumps(attributes) == '{"mrr": 12345678901234567890.10, "n": 1, "tags": ["a", {"b": null}]}'
