"""Mapping params: validate() accepts sensible mappings and explains bad ones; lookup() reads fields."""

import pytest

from sluice import mapping, settings
from sluice.errors import MappingError


@pytest.mark.parametrize("param, value", [
    ("api_mapping", settings.DEFAULT_API_MAPPING),
    ("csv_mapping", settings.DEFAULT_CSV_MAPPING),
    ("api_mapping", {"source_id": "user.id"}),
    ("csv_mapping", {"source_id": "sku", "value": "price"}),
])
def test_validate_accepts_good_mappings(param, value):
    assert mapping.validate(value, param) == value


def test_validate_returns_a_plain_dict_copy():
    given = dict(settings.DEFAULT_API_MAPPING)
    result = mapping.validate(given, "api_mapping")
    assert type(result) is dict and result is not given


@pytest.mark.parametrize("value, message", [
    (["id"], 'api_mapping must be an object like {"source_id": "id"}, got list'),
    ("id", 'api_mapping must be an object like {"source_id": "id"}, got str'),
    (None, 'api_mapping must be an object like {"source_id": "id"}, got NoneType'),
    ({"source_id": "id", "price": "p", "colour": "c"},
     "api_mapping has unknown column(s) colour, price; allowed: source_id, name, value, description"),
    ({"name": "title", "value": "userId"}, "api_mapping must map source_id"),
    ({"source_id": ""}, "api_mapping.source_id must be a non-empty field name, got ''"),
    ({"source_id": "id", "name": "   "}, "api_mapping.name must be a non-empty field name, got '   '"),
    ({"source_id": "id", "value": 3}, "api_mapping.value must be a non-empty field name, got 3"),
    ({"source_id": None}, "api_mapping.source_id must be a non-empty field name, got None"),
])
def test_validate_rejects_bad_mappings_with_clear_message(value, message):
    with pytest.raises(MappingError) as excinfo:
        mapping.validate(value, "api_mapping")
    assert str(excinfo.value) == message


def test_mapping_error_is_a_value_error():
    with pytest.raises(ValueError):
        mapping.validate({}, "csv_mapping")


@pytest.mark.parametrize("record, field, expected", [
    ({"id": 5}, "id", 5),
    ({"id": None}, "id", None),
    ({"title": ""}, "title", ""),
    ({"user": {"id": 9}}, "user.id", 9),
    ({"a": {"b": {"c": "deep"}}}, "a.b.c", "deep"),
    ({"user.id": "literal", "user": {"id": "nested"}}, "user.id", "literal"),
    ({"user": {"id": None}}, "user.id", None),
    ({"tags": ["first", "second"]}, "tags.0", "first"),
    ({"tags": ["first", "second"]}, "tags.1", "second"),
    ({"user": [{"id": 1}]}, "user.0.id", 1),
    ({"a": {"items": [{}, {}, {"name": "third"}]}}, "a.items.2.name", "third"),
    ({"grid": [[1, 2], [3, 4]]}, "grid.1.0", 3),
    ({"tags": [None]}, "tags.0", None),
    ({"tags.0": "literal", "tags": ["indexed"]}, "tags.0", "literal"),
    ({"counts": {"0": "a key", "-1": "also a key", "01": "a key too"}}, "counts.0", "a key"),
    ({"counts": {"0": "a key", "-1": "also a key", "01": "a key too"}}, "counts.-1", "also a key"),
    ({"counts": {"0": "a key", "-1": "also a key", "01": "a key too"}}, "counts.01", "a key too"),
])
def test_lookup_finds_plain_and_dotted_fields(record, field, expected):
    assert mapping.lookup(record, field) == expected


@pytest.mark.parametrize("record, field", [
    ({}, "id"),
    ({"ID": 1}, "id"),
    ({"user": {"name": "x"}}, "user.id"),
    ({"user": 5}, "user.id"),
    ({"user": None}, "user.id"),
    ({"user": [{"id": 1}]}, "user.1.id"),
    ({"user": [{"id": 1}]}, "user.id"),
    ({"tags": []}, "tags.0"),
    ({"tags": ["a", "b"]}, "tags.2"),
    ({"tags": ["a", "b"]}, "tags.-1"),
    ({"tags": ["a", "b"]}, "tags.-0"),
    ({"tags": ["a", "b"]}, "tags.01"),
    ({"tags": ["a", "b"]}, "tags.+1"),
    ({"tags": ["a", "b"]}, "tags. 1"),
    ({"tags": ["a", "b"]}, "tags.1 "),
    ({"tags": ["a", "b"]}, "tags.\u0661"),
    ({"tags": ["a", "b"]}, "tags.1.0"),
    ({"tags": ["a", "b"]}, "tags." + "9" * 5000),
    ({"name": "text"}, "name.0"),
])
def test_lookup_reports_absent_fields_as_missing(record, field):
    assert mapping.is_missing(mapping.lookup(record, field))


def test_present_none_is_not_missing():
    assert not mapping.is_missing(mapping.lookup({"id": None}, "id"))
