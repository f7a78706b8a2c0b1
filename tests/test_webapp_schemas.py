"""Query-string parsing: cursors, literal search patterns, repeated parameters."""

import base64
from datetime import datetime, timedelta, timezone

import pytest
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from webapp.routes_data import like_pattern
from webapp.schemas import data_query_schema, data_page_schema, load_query, page_query_schema


@pytest.mark.parametrize("position", [
    (datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc), 1),
    (datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=5, minutes=30))), 2**63 - 1),
])
def test_cursor_round_trip(position):
    cursor = data_page_schema.dump({"next_cursor": position})["next_cursor"]
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor  # safe in a URL as it is
    assert data_query_schema.load({"cursor": cursor})["cursor"] == (*position, None)  # no fingerprint: default order


@pytest.mark.parametrize("text", [
    '["2024-05-01T12:00:00+00:00"]', '["2024-05-01T12:00:00+00:00", 1, 2]', '["2024-05-01T12:00:00+00:00", "1"]',
    '["2024-05-01T12:00:00+00:00", true]', '["2024-05-01T12:00:00+00:00", 0]', '{"a": 1, "b": 2}', '"ab"', "12",
    '["2024-05-01T12:00:00+00:00", 9223372036854775808]', "\xff\xfe",
])
def test_malformed_cursors_are_rejected(text):
    cursor = base64.urlsafe_b64encode(text.encode("latin-1")).decode().rstrip("=")
    with pytest.raises(ValidationError) as error:
        data_query_schema.load({"cursor": cursor})
    assert list(error.value.messages) == ["cursor"]


@pytest.mark.parametrize("search, pattern", [
    ("plain", "%plain%"),
    ("100%", "%100\\%%"),
    ("a_b", "%a\\_b%"),
    ("C:\\temp", "%C:\\\\temp%"),
    ("\\%_", "%\\\\\\%\\_%"),
    ("O'Brien", "%O'Brien%"),
])
def test_like_pattern_escapes_wildcards(search, pattern):
    assert like_pattern(search) == pattern


def test_defaults_of_the_data_query():
    assert load_query(data_query_schema, MultiDict()) == {"page": 1, "page_size": 10, "count": "exact",
                                                            "include_deleted": False}


def test_repeated_parameters_are_named():
    with pytest.raises(ValidationError) as error:
        load_query(page_query_schema, MultiDict([("page", "1"), ("page", "1"), ("page_size", "5")]))
    assert error.value.messages == {"page": ["Given more than once; pass it once."]}
