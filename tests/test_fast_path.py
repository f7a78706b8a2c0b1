"""The set-based fast path of normalize agrees with the marshmallow schema, which defines the rules.

Every record the SQL fast path accepts must be accepted by the schema with exactly the same values;
records it cannot decide go to the schema (so reject reasons always come from the schema).
"""

import itertools
import math

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sluice import rules, settings, warehouse

TEXTS = ["plain", "Ærø façade", " padded ", "\tTab", "trail\n", "\u00a0nbsp", "\u3000ideographic", "x\u2028",
         "", "   ", "0", "12", "it's", 'quote"', "back\\slash", "%_", "a" * 2000, "\u0085next", "\x1cfs",
         "é", "naïve", "Ærø\u2003", "\u1680ogham", "end\u202f", "~", "\x7f", "z\x7f", "日本"]
NUMBER_TEXTS = ["12.5", " 7 ", "-1e3", "1e400", "1e-400", "abc", "1,234", "NaN", "Infinity", "-inf", "1_000",
                "+5", "5.", ".5", "-0", "0000000000000001", "1234567890123456789", "0.1234567890123456",
                "٣", "", "1e5", "-.5", "3.14159265358979",
                "1234567890123456.123456789012345", "1234567890123456.1234567890123456", "9" * 32, "-" + "9" * 31,
                "0.30000000000000004", "1.", ".", "-", "+-1", "1.2.3", "1-2", "00.00"]
JSON_VALUES = [3, -4, 0, 2.5, 1e20, 10**30, True, False, None, {"a": 1}, [1], 1.0, -0.0, 12345678901234567890]


def cases():
    mapping = settings.DEFAULT_CSV_MAPPING
    for name, value in itertools.product(TEXTS + JSON_VALUES, NUMBER_TEXTS + JSON_VALUES):
        yield {"id": "17", "name": name, "value": value, "description": "d"}
    for identifier in TEXTS + JSON_VALUES:
        yield {"id": identifier, "name": "n", "value": "1"}
    for description in TEXTS + JSON_VALUES:
        yield {"id": "1", "name": "n", "value": "1", "description": description}
    yield {"id": "1", "name": "n", "value": "1"}  # description absent
    assert mapping


FAST_SQL = """
select f.source_id, f.name, f.value, f.description
from sluice_fast_path(%(record)s::jsonb, %(source_id_field)s, %(name_field)s, %(value_field)s,
                      %(description_field)s, %(edge_space)s) f
"""


@pytest.fixture(scope="module")
def conn(make_database):
    with psycopg.connect(make_database()) as connection:
        yield connection


def fast_path(conn, record: dict, mapping: dict):
    params = {**warehouse.fast_path_params(mapping), "record": Jsonb(record)}
    row = conn.execute(FAST_SQL, params).fetchone()
    return None if row is None else dict(zip(("source_id", "name", "value", "description"), row))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b and type(a) is type(b)


def test_fast_path_accepts_only_what_the_schema_accepts_with_the_same_values(conn):
    mapping = settings.DEFAULT_CSV_MAPPING
    checked = accepted = 0
    for record in cases():
        # both paths see the record as stored in jsonb (numeric: -0.0 is 0.0) and loaded by psycopg
        (stored,) = conn.execute("select %s::jsonb", (Jsonb(record),)).fetchone()
        fast = fast_path(conn, stored, mapping)
        schema_row, reason = rules.normalize_record(stored, mapping)
        checked += 1
        if fast is None:
            continue
        accepted += 1
        assert schema_row is not None, f"fast path accepted {record!r}; the schema rejects it: {reason}"
        for column in ("source_id", "name", "value", "description"):
            assert same(fast[column], schema_row[column]), (record, column, fast[column], schema_row[column])
    assert checked > 1000
    # the fast path must carry the ordinary records, or it is no fast path
    assert accepted > 100


@pytest.mark.parametrize("record", [
    {"id": "1", "name": "widget", "value": "12.5", "description": "a, \"quoted\" text"},
    {"id": 7, "title": "post", "userId": 3, "body": "text"},
    {"id": "2", "name": "Zürich", "value": "-0.25"},
])
def test_ordinary_records_take_the_fast_path(conn, record):
    mapping = settings.DEFAULT_API_MAPPING if "title" in record else settings.DEFAULT_CSV_MAPPING
    assert fast_path(conn, record, mapping) is not None


def test_every_ascii_whitespace_is_below_33_as_the_fast_path_assumes():
    # sluice_edge_ok passes codes 33..127 without looking them up in the whitespace set
    assert all(ord(c) <= 32 or ord(c) > 127 for c in rules.SPACE_CHARACTERS)
    assert {ord(c) for c in rules.SPACE_CHARACTERS if ord(c) < 128} == {9, 10, 11, 12, 13, 28, 29, 30, 31, 32}


def test_dotted_mapping_paths_agree(conn):
    mapping = {"source_id": "user.id", "name": "user.name", "value": "stats.score"}
    record = {"user": {"id": 5, "name": "Ada"}, "stats": {"score": 9}}
    assert fast_path(conn, record, mapping) == {"source_id": "5", "name": "Ada", "value": 9.0, "description": None}
    assert rules.normalize_record(record, mapping)[0] == {"source_id": "5", "name": "Ada", "value": 9.0,
                                                          "description": None}
