"""Query-string parsing: cursors, literal search patterns, repeated parameters."""

import base64
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from webapp import exact_json
from webapp.routes_data import like_pattern
from webapp.schemas import RecordSchema, data_query_schema, data_page_schema, load_query, page_query_schema


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


def _random_rows(count: int, seed: int = 28) -> list[dict]:
    """data_page rows as psycopg2 gives them: nulls, microseconds or none, other offsets, exact numbers, nesting."""
    rng = random.Random(seed)
    zones = [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]

    def moment():
        return datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                        rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, 1, 123456, 999999]),
                        tzinfo=rng.choice(zones))

    values = [None, "", "ünïcode\n\"quoted\"", 0, -1, 2**63 - 1, 1.5, True, False, [1, None, "x"],
              {"nested": {"deep": [Decimal("0.1")]}}, Decimal("12345678901234567890.12"), Decimal("-0E-7")]
    return [{"id": rng.randint(1, 2**63 - 1), "source": rng.choice(["api", "csv", "a.b-c_d"]),
             "source_id": rng.choice(["1", "with/slash", "spaces and ünïcode", ""]),
             "name": rng.choice([None, "", "name ✓", "x" * 300]),
             "value": rng.choice([None, 0.0, -0.0, 1e-300, 123.45, 1e308, 3, Decimal("2.5")]),
             "description": rng.choice([None, "", "line\nbreak \\ \u2028"]),
             "created_at": moment(), "updated_at": moment(), "deleted_at": rng.choice([None, moment()]),
             "attributes": {f"field_{n}": rng.choice(values) for n in range(rng.randint(0, 4))},
             "ordinal": 1, "total": 9, "watermark": moment()}  # data_answer's own columns are not the record's
            for _ in range(count)]


def test_records_are_dumped_exactly_as_the_record_schema_dumps_them():
    rows = _random_rows(500)
    fast = data_page_schema.dump({"data": rows})["data"]
    walked = RecordSchema(many=True).dump(rows)
    assert fast == walked
    # and so to the same bytes (the exact encoder, sorted keys: the app's JSON provider)
    assert exact_json.dumps(fast, sort_keys=True) == exact_json.dumps(walked, sort_keys=True)
