"""Normalization rules: what becomes a normalized row, and the reason a user reads when it does not."""

import pytest

from sluice import rules, settings

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
