"""The set-based fast path of normalize agrees with the marshmallow schema, which defines the rules.

Every record the SQL fast path accepts must be accepted by the schema with exactly the same values;
records it cannot decide go to the schema (so reject reasons always come from the schema).
"""

import decimal
import itertools
import json
import math
import random
import re

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sluice import mapping, rules, settings
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

TEXTS = ["plain", "Ærø façade", " padded ", "\tTab", "trail\n", "\u00a0nbsp", "\u3000ideographic", "x\u2028",
         "", "   ", "0", "12", "it's", 'quote"', "back\\slash", "%_", "a" * 2000, "\u0085next", "\x1cfs",
         "é", "naïve", "Ærø\u2003", "\u1680ogham", "end\u202f", "~", "\x7f", "z\x7f", "日本"]
NUMBER_TEXTS = ["12.5", " 7 ", "-1e3", "1e400", "1e-400", "abc", "1,234", "NaN", "Infinity", "-inf", "1_000",
                "+5", "5.", ".5", "-0", "0000000000000001", "1234567890123456789", "0.1234567890123456",
                "٣", "", "1e5", "-.5", "3.14159265358979",
                "1234567890123456.123456789012345", "1234567890123456.1234567890123456", "9" * 32, "-" + "9" * 31,
                "0.30000000000000004", "1.", ".", "-", "+-1", "1.2.3", "1-2", "00.00"]
JSON_VALUES = [3, -4, 0, 2.5, 1e20, 10**30, True, False, None, {"a": 1}, [1], 1.0, -0.0, 12345678901234567890,
               decimal.Decimal("12345678901234567890.12"), decimal.Decimal("1E+400"), decimal.Decimal("1e-7"),
               decimal.Decimal("0.1000000000000000000000000001")]
_DECIMAL_MARK = re.compile(r'"decimal:([^"]*)"')


def json_text(record) -> str:
    """JSON of a record whose Decimals are numbers written as they are (json.dumps has no such option)."""
    return _DECIMAL_MARK.sub(r"\1", json.dumps(record, default=lambda number: f"decimal:{number}"))


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
    params = {**rules.Normalization(mapping).fast_path_params, "record": Jsonb(record, dumps=json_text)}
    row = conn.execute(FAST_SQL, params).fetchone()
    return None if row is None else dict(zip(("source_id", "name", "value", "description"), row))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("mapping", [settings.DEFAULT_CSV_MAPPING, {"source_id": "id", "name": "name"},
                                     {"source_id": "id", "value": "value"}, {"source_id": "id"}])
def test_fast_path_accepts_only_what_the_schema_accepts_with_the_same_values(conn, mapping):
    checked = accepted = 0
    for record in cases():
        # both paths see the record as stored in jsonb (numeric: -0.0 is 0.0); the schema reads it as normalize's
        # slow path does, its text with Decimal numbers
        stored, text = conn.execute("select %s::jsonb, %s::jsonb::text", (Jsonb(record, dumps=json_text),) * 2).fetchone()
        fast = fast_path(conn, stored, mapping)
        schema_row, reason = rules.normalize_record(rules.read_json(text), mapping)
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


# Random records with nested objects and arrays, and random mappings whose fields are paths into them:
# keys that look like numbers or hold dots, arrays of objects, nulls, empty arrays, and array segments
# PostgreSQL's #> would read as indexes (-1, 01, +1, ' 1') but the mapping rule does not.
KEYS = ["id", "name", "value", "tags", "items", "a", "0", "1", "01", "-1", " 1", "a.b", "x.0", "", "\u0663"]
ODD_INDEXES = ["-1", "-0", "01", "00", "+1", " 1", "\t0", "1 ", "1e0", "0x1", "\u0661", "1.0", "", "2147483648",
               "99999999999999999999"]
LEAVES = ["plain", "Zürich", " padded ", "", "12.5", "-3", "7", "1e3", "abc", 0, 42, -7, 2.5, 1e300, None, True,
          False, "x" * 40, 1, 99, "0.5", "3.25", 1234567, "-0"]


def random_value(rng, depth: int):
    roll = rng.random()
    if depth >= 3 or roll < 0.45:
        return rng.choice(LEAVES)
    if roll < 0.75:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def random_record(rng) -> dict:
    return {rng.choice(KEYS): random_value(rng, 1) for _ in range(rng.randint(1, 6))}


def random_path(rng, record: dict) -> str:
    """A dotted path that mostly leads somewhere in record, with the odd wrong or strange segment."""
    if rng.random() < 0.1:
        return rng.choice(KEYS + ["tags.0", "a.b.c", "items.0.name"]) or "id"
    parts, value = [], record
    while parts == [] or (isinstance(value, (dict, list)) and rng.random() < 0.95):
        if isinstance(value, dict) and value and rng.random() < 0.9:
            part = rng.choice(list(value))
            value = value[part]
        elif isinstance(value, list) and rng.random() < 0.7:
            index = rng.randrange(len(value) + 1)  # one past the end now and then
            part, value = str(index), value[index] if index < len(value) else None
        else:
            part, value = rng.choice(KEYS + ODD_INDEXES), None
        parts.append(part)
    return ".".join(parts)


def random_mapping(rng, record: dict) -> dict:
    columns = ["source_id", "name", "value"] + (["description"] if rng.random() < 0.6 else [])
    return {column: random_path(rng, record) for column in columns}


def lookups(conn, record: dict, field_map: dict) -> dict:
    """sluice_lookup of every mapped field, as psycopg loads it; None stands for SQL null (absent)."""
    fields = list(field_map.values())
    row = conn.execute("select " + ", ".join(["sluice_lookup(%s::jsonb, %s)"] * len(fields)),
                       [arg for field in fields for arg in (Jsonb(record), field)]).fetchone()
    return dict(zip(fields, row))


def test_random_paths_into_objects_and_arrays_agree_with_the_schema(conn):
    rng = random.Random(12)
    checked = schema_accepted = fast_accepted = 0
    for _ in range(3000):
        record = random_record(rng)
        field_map = random_mapping(rng, record)
        if any(not field.strip() for field in field_map.values()):
            continue  # mapping.validate refuses it before any record is read
        stored, text = conn.execute("select %s::jsonb, %s::jsonb::text", (Jsonb(record, dumps=json_text),) * 2).fetchone()
        checked += 1
        # one rule for every path: the SQL lookup finds exactly what mapping.lookup finds
        for field, found in lookups(conn, stored, field_map).items():
            expected = mapping.lookup(stored, field)
            expected = None if mapping.is_missing(expected) else expected
            assert json.dumps(found) == json.dumps(expected), (stored, field, found, expected)
        fast = fast_path(conn, stored, field_map)
        schema_row, reason = rules.normalize_record(rules.read_json(text), field_map)
        schema_accepted += schema_row is not None
        if fast is None:
            continue
        fast_accepted += 1
        assert schema_row is not None, f"fast path accepted {stored!r} by {field_map!r}; the schema rejects: {reason}"
        for column in ("source_id", "name", "value", "description"):
            assert same(fast[column], schema_row[column]), (stored, field_map, column, fast[column],
                                                            schema_row[column])
    # the fast path still carries most of what the schema accepts (it declines padded text, names written as
    # decimals, huge numbers: the schema decides those)
    counts = f"{checked} records, the schema accepted {schema_accepted}, the fast path {fast_accepted}"
    assert checked > 2500 and schema_accepted > 250, counts
    assert fast_accepted > 0.6 * schema_accepted, counts


@pytest.mark.parametrize("field, record, expected", [
    ("tags.0", {"id": "1", "tags": ["first", "second"], "value": 1}, "first"),
    ("items.1.name", {"id": "1", "items": [{"name": "a"}, {"name": "b"}], "value": 1}, "b"),
    ("tags.-1", {"id": "1", "tags": ["first", "last"], "value": 1}, None),
    ("tags.01", {"id": "1", "tags": ["first", "second"], "value": 1}, None),
    ("tags.+1", {"id": "1", "tags": ["first", "second"], "value": 1}, None),
    ("tags. 1", {"id": "1", "tags": ["first", "second"], "value": 1}, None),
    ("tags.2", {"id": "1", "tags": ["first", "second"], "value": 1}, None),
    ("a.-1", {"id": "1", "a": {"-1": "a key, not an index"}, "value": 1}, "a key, not an index"),
])
def test_array_paths_read_the_same_on_both_paths(conn, field, record, expected):
    field_map = {"source_id": "id", "name": field, "value": "value"}
    schema_row, reason = rules.normalize_record(record, field_map)
    fast = fast_path(conn, record, field_map)
    if expected is None:
        assert schema_row is None and reason == f"name (field {field!r}): missing"
        assert fast is None
    else:
        assert schema_row is not None and schema_row["name"] == expected, reason
        assert fast == schema_row


def test_a_run_reads_list_items_by_index_and_nothing_else(monkeypatch, database_url, tmp_path):
    # 40 posts with lists; post 7's tags list is empty
    posts = [{"id": n, "tags": [] if n == 7 else [f"first {n}", "last"], "readings": [{"v": n}, {"v": n * 10}]}
             for n in range(1, 41)]
    sources = SourceServer().start()
    sources.serve_json("posts", posts, page_size=25)
    sources.serve_bytes("items.csv", sample_data.csv_bytes(5, bad_every=100))
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    pipeline = Pipeline(database_url, sources)
    try:
        state, _ = pipeline.run({"api_mapping": {
            "source_id": "id", "name": "tags.0", "value": "readings.1.v", "description": "tags.-1"}})
    finally:
        sources.stop()

    assert state == "success"
    rows = pipeline.rows("select source_id, name, value, description from normalized_data where source = 'api'")
    # tags.-1 is no index: every description is absent, none is "last"
    assert sorted(rows, key=lambda row: int(row[0])) == [
        (str(n), f"first {n}", n * 10.0, None) for n in range(1, 41) if n != 7]
    assert pipeline.rows("select source_id, reason from rejected_records where source = 'api'") == [
        ("7", "name (field 'tags.0'): missing")]


# Declared fields: ingest types a record's fields (rules.AttributeTyper) when it can be sure of the schema's value, and
# leaves the record to the schema otherwise. Hostile values of every type, with the field optional and required.
HOSTILE = {
    "text": TEXTS,
    "integer": ["12", " 12 ", "+7", "-0", "007", "9223372036854775807", "9223372036854775808",
                "-9223372036854775808", "123456789012345678", "1234567890123456789", "99999999999999999999",
                "1e5", "1.0", "1,000", "٣", "１２", "0x10", "--1", "+-1", "1 2"],
    "numeric": NUMBER_TEXTS + ["1.50", "-0.0", "0" * 50 + "1", "1" * 41, "1e131071", "1e-16383", "+.5", "5e", "5-",
                               "1.2.", "-.5", "+.", ".-5", "5+5", "++5", "0.", "-", "1E+3", "2.5e-3", "1,5",
                               "1" * 999, "1" * 1000, "0." + "1" * 16383, "0." + "1" * 16384, "1e131072"],
    "boolean": ["true", "false", "TRUE", "FALSE", "True", "False", "tRuE", " true", "false\n", "yes", "no", "1",
                "0", "t", "f", "on", "ｔｒｕｅ"],
    "timestamp": ["2026-01-01T10:00:00+05:30", "2026-01-01 10:00", "2026-01-01T10:00Z", "2026-01-01T10:00:00Z",
                  "2026-02-30T00:00:00Z", "2016-12-31T23:59:60Z", "2026-01-01T10:00:00.123456Z",
                  "2026-01-01T10:00:00.1234567Z", "2026-01-01T10:00:00.000000Z", "2026-01-01T10:00:00.5-01:00",
                  "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z", "2026-01-01T10:00:00-14:59",
                  "2026-01-01T10:00:00+15:00", "2026-01-01T10:00:00+23:59", "2026-01-01T10:00:00+24:00",
                  "2026-01-01T10:00:00+05:60", "9998-12-31T23:00:00-05:00", "9999-12-31T23:00:00-05:00",
                  "1001-01-01T00:00:00+05:00", "0999-06-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                  " 2026-01-01T10:00:00Z", "2026-01-01t10:00:00z", "２０２６-01-01T10:00:00Z", "2024-02-29T12:00:00",
                  "2023-02-29T12:00:00", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z",
                  "2026-01-01", "2026-01-01T10:00:00+0530", "2026-01-01T10:00:00 +05:30", "2026-01-01T1:00:00Z",
                  "2026-01-01T10:00:00.000001Z", "2026-01-01 10:00:00.100-00:00", "2026-01-01T10:00:00+00:00",
                  "2026-01-01T10:00:00.1234560Z", "2026-01-01T10:00:60Z", "2026-01-01T10:00:00.Z",
                  "2026-01-01T10:00:00-05", "2026-01-01T10:00+05:30", "2026-01-01T10:00:00Z+01:00",
                  "2026-01-01T10:00:00ZZ", "2026-01-01T10:00:5Z", "2026-01-01T10:00:00.-1Z", "0000-01-01T00:00:00Z",
                  "2026-01-01T10:00:00-00:00", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-00:01",
                  "0001-01-01T00:00:00-00:01", "2026-06-15T12:00:00+14:00", "2026-06-15T12:00:00-23:59"],
    "date": ["2026-02-28", "2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2026-02-30", "2026-04-31",
             "0000-01-01", "0001-01-01", "9999-12-31", "2026-1-1", " 2026-01-01", "2026-13-01", "2026-01-00",
             "2026-01-01T00:00:00Z", "٢٠٢٦-01-01"],
    "json": TEXTS + [[], {}, {"a": [1, 2.50, None]}, "  ", "x "],
}


def varied(kind: str, count: int, seed: int) -> list[str]:
    """Random values of a kind as sources spell them: timestamps with and without offsets and fractions, numerics
    with exponents, commas and signs, booleans in any case, blanks and padding."""
    chance = random.Random(seed)
    digits = lambda n: "".join(chance.choice("0123456789") for _ in range(n))  # noqa: E731
    values = []
    for _ in range(count):
        pad = chance.choice(["", "", "", " ", "\t", "\u00a0"])
        if kind == "timestamp":
            value = (f"{chance.choice(['2026', '1999', '0001', '9999', '0000', digits(4)])}-{digits(2)}-{digits(2)}"
                     f"{chance.choice('T T')}{digits(2)}:{digits(2)}"
                     + chance.choice(["", f":{digits(2)}", f":{digits(2)}.{digits(chance.randint(1, 9))}"])
                     + chance.choice(["", "Z", "z", f"{chance.choice('+-')}{digits(2)}:{digits(2)}",
                                      f"+{chance.randint(0, 15):02d}:{chance.randint(0, 61):02d}"]))
        elif kind == "numeric":
            value = (chance.choice(["", "-", "+"]) + digits(chance.randint(0, 20))
                     + chance.choice(["", ".", "." + digits(chance.randint(1, 8)), "," + digits(3)])
                     + chance.choice(["", "", f"e{chance.choice(['', '-', '+'])}{digits(chance.randint(1, 6))}"]))
        elif kind == "integer":
            value = chance.choice(["", "-", "+"]) + digits(chance.randint(0, 21))
        elif kind == "boolean":
            value = "".join(chance.choice((c, c.upper())) for c in chance.choice(["true", "false", "yes", "tru"]))
        elif kind == "date":
            value = f"{digits(4)}-{digits(2)}-{digits(2)}"
        else:
            value = chance.choice(TEXTS) + digits(chance.randint(0, 3))
        values.append(chance.choice([pad + value + pad, value, value, "", "   "]))
    return values


def typed_records(kind: str):
    """(required, record) per value of the kind: HOSTILE, varied, every JSON value, and the field absent."""
    for required in (False, True):
        for value in [..., *HOSTILE[kind], *varied(kind, 300, seed=23), *JSON_VALUES]:
            yield required, {"id": "1", "name": "n", "value": "1"} | ({} if value is ... else {"f": {"x": value}})


def jsonb_text(conn, text: str) -> str:
    return conn.execute("select %s::jsonb::text", (text,)).fetchone()[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_ingest_types_fields_only_with_the_schemas_values(conn, kind):
    """The attributes ingest stages (rules.AttributeTyper, for an API record decoded as the API reader decodes it,
    and for a CSV row) are the schema's own for every value it decides, and it decides every value the schema
    accepts unless the reader's decoding differs from the schema's (a float, an object, a list)."""
    from sluice import sources

    checked = accepted = 0
    for required, record in typed_records(kind):
        normalization = rules.Normalization(settings.DEFAULT_CSV_MAPPING, {"f": sources.Field(kind, "f.x", required)})
        text = json_text(record)
        decoded = json.loads(text)  # as the API reader decodes a record: numbers with a point as floats
        fast = normalization.typer.record(decoded)
        row, reason = normalization.normalize_json(text)
        checked += 1
        value = decoded.get("f", {}).get("x", ...)
        if fast is None:
            assert row is None or type(value) in (float, dict, list), \
                f"the typer left {value!r} (required {required}) to the schema, which types it: {row}"
            continue
        accepted += 1
        assert row is not None, f"the typer typed {value!r} as {fast}; the schema rejects it: {reason}"
        assert jsonb_text(conn, fast) == jsonb_text(conn, rules.dumps(row[-1])), (value, required)
        # a CSV row holds strings only, each found by its column
        if isinstance(value, str) or value is ...:
            reader = rules.Normalization(settings.DEFAULT_CSV_MAPPING, {"f": sources.Field(kind, "x", required)}
                                         ).typer.rows_reader(["id", "x"] if value is not ... else ["id"])
            assert reader([["1", value] if value is not ... else ["1"]]) == [fast]
    assert checked > 600 and accepted >= 100, f"{kind}: the typer typed {accepted} of {checked}"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("required", [False, True])
def test_a_block_of_csv_rows_is_typed_as_each_row_alone(kind, required):
    """A CSV's rows are typed a block at a time, a column at once (a column of canonical spellings is written as
    it is): each row's attributes are those of the schema's reading of its own value, whatever its neighbours, in
    blocks of canonical values only, of one hostile value among canonical ones, and of every value of the kind."""
    from sluice import sources

    normalization = rules.Normalization(settings.DEFAULT_CSV_MAPPING, {"f": sources.Field(kind, "x", required)})
    reader = normalization.typer.rows_reader(["id", "x", "y"])
    chance = random.Random(7)
    # spellings a column of a typical export holds, most of them canonical
    usual = {"integer": lambda n: str(chance.randint(-10**18, 10**18) // 10**chance.randint(0, 18)),
             "numeric": lambda n: (f"{chance.randint(-10**6, 10**6)}."
                                   f"{chance.randint(0, 999):0{chance.randint(1, 3)}d}"),
             "boolean": lambda n: chance.choice(["true", "false"]),
             "timestamp": lambda n: (f"{chance.randint(1, 9999):04d}-{chance.randint(1, 12):02d}-"
                                     f"{chance.randint(1, 31):02d}T{chance.randint(0, 23):02d}:"
                                     f"{chance.randint(0, 59):02d}:{chance.randint(0, 59):02d}Z"),
             "date": lambda n: (f"{chance.randint(1, 9999):04d}-{chance.randint(1, 12):02d}-"
                                f"{chance.randint(1, 31):02d}"),
             }.get(kind, lambda n: f"value {n}")
    spelled = list(map(usual, range(300)))
    # two canonical values in one: the column joined by newlines must not read them as two rows
    joined = [f"{a}{line_end}{b}" for a, b, line_end in zip(spelled, spelled[1:10], ["\n", "\r\n", "\r"] * 3)]
    values = [value for value in [*HOSTILE[kind], *varied(kind, 2000, seed=41), *spelled, *joined]
              if isinstance(value, str)]
    expected, written = {}, {}
    for value in values:
        row, _ = normalization.normalize({"id": "1", "name": "n", "value": "1", "x": value})
        # the schema's value as the type's writer writes it (the row-by-row reading's text)
        typed = None if row is None else row[-1]["f"]
        written[value] = "null" if typed is None else rules._CSV_WRITERS[kind](typed)
        expected[value] = None if row is None else '{"f":%s}' % written[value]
    canonical = [value for value in values if written[value] in (value, f'"{value}"')]
    assert kind in ("text", "json") or len(canonical) > 20, canonical
    blocks = [canonical, values, *([*canonical[:30], value, *canonical[30:60]] for value in values)]
    for block in blocks:
        assert reader([["1", value, "y"] for value in block]) == [expected[value] for value in block], block


@pytest.mark.parametrize("kind, value, expected", [
    ("integer", "12", '{"f": 12}'), ("integer", 12, '{"f": 12}'), ("numeric", "12345678901234567890.10",
                                                                  '{"f": 12345678901234567890.10}'),
    ("boolean", "true", '{"f": true}'), ("timestamp", "2026-01-01T10:00:00+05:30", '{"f": "2026-01-01T04:30:00Z"}'),
    ("timestamp", "2026-01-01T10:00:00Z", '{"f": "2026-01-01T10:00:00Z"}'),
    ("date", "2026-02-28", '{"f": "2026-02-28"}'), ("json", "x ", '{"f": "x "}'), ("text", " x", '{"f": "x"}'),
    ("text", "", '{"f": null}'), ("numeric", "1e3", '{"f": 1000}'),
])
def test_ordinary_typed_values_are_typed_by_ingest(conn, kind, value, expected):
    from sluice import sources

    normalization = rules.Normalization(settings.DEFAULT_CSV_MAPPING, {"f": sources.Field(kind, "f")})
    assert jsonb_text(conn, normalization.typer.record({"id": "1", "name": "n", "value": "1", "f": value})) == expected


def test_no_typer_without_fields_or_with_row_checks():
    from sluice import checks, sources

    assert rules.Normalization(settings.DEFAULT_CSV_MAPPING).typer is None
    fields = {"f": sources.Field("integer", "f")}
    assert rules.Normalization(settings.DEFAULT_CSV_MAPPING, fields).typer is not None
    # a row-level check is the schema's to run: every record takes it
    assert rules.Normalization(settings.DEFAULT_CSV_MAPPING, fields, (checks.Check("not_null", "f"),)).typer is None
