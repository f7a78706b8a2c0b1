"""Hostile input end to end: each file of tests/data/ served on 127.0.0.1, fetched, stored, normalized, upserted.

Every data row read ends up exactly once: loaded into normalized_data or quarantined in rejected_records
with a reason a person can act on (it names the line, the record or the field). The byte-level parsing
cases live in test_csv_source.py; here the question is what lands in the warehouse.
"""

import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import requests

from sluice import api_source, csv_source, http_client, rules, runs, settings, warehouse
from sluice_devtools.source_server import SourceServer
from sluice.errors import SourceError
from sluice.failures import Failure

CORPUS = Path(__file__).resolve().parent / "data"
RUN_ID = "hostile-run"
POLICY = http_client.RetryPolicy(attempts=1, timeout=5.0, backoff_base=0.01, backoff_max=0.01)
MAPPINGS = {"api": settings.DEFAULT_API_MAPPING, "csv": settings.DEFAULT_CSV_MAPPING}
TABLES = ("raw_api_data", "raw_csv_data", "normalized_data", "etl_checkpoint", "etl_runs", "rejected_records",
          "staged_records", "normalized_stage", "etl_step_results")
# A reason names where the problem is: the line (CSV), the record (API, duplicates) or the normalized field.
WHERE = re.compile(r"^(line \d+|record \d+)\b"
                   r"|^(source_id|name|value|description)( \(field '[^']+'\))?: "
                   r"|^duplicate source_id .+ record \d+ is overridden by record \d+")


class Matches:
    """Equal to any value the regular expression fully matches (for reasons a fix has yet to word)."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern)

    def __eq__(self, other):
        return isinstance(other, str) and bool(self.pattern.fullmatch(other))

    def __repr__(self):
        return f"Matches({self.pattern.pattern!r})"


ANY_STAGE = Matches("store_raw|normalize")


def description_of_200_kb() -> str:
    """Deterministic 200 KB text with every character CSV has to quote, not ending in (trimmed) whitespace."""
    return "".join(f'{n}: a, "quoted" b;\nc\r\nüñí ✓ ' for n in range(6_500))[:204_800].rstrip() + "."


def long_id() -> str:
    """An id past PostgreSQL's btree row limit (2704 bytes) that compression cannot shrink: not repetitive."""
    return "".join(f"{n * 7919 % 10007:05d}" for n in range(1_000))  # 5,000 characters


def csv_rows(*rows: str) -> bytes:
    return ("id,name,value,description\n" + "".join(row + "\n" for row in rows)).encode()


GENERATED = {
    "200kb_field.csv": lambda: csv_rows('1,long,1,"' + description_of_200_kb().replace('"', '""') + '"',
                                        "2,short,2,plain"),
    "long_id.csv": lambda: csv_rows("1,fine,1,fine", f"{long_id()},long id,2,x", "3,fine,3,fine"),
    "api_long_id.json": lambda: json.dumps([{"id": 1, "title": "fine", "userId": 1},
                                            {"id": long_id(), "title": "long id", "userId": 1}]).encode(),
}


def content_of(name: str) -> bytes:
    return GENERATED[name]() if name in GENERATED else (CORPUS / name).read_bytes()


def source_of(name: str) -> str:
    return "api" if name.endswith(".json") else "csv"


@pytest.fixture(scope="module")
def server():
    with SourceServer() as running:
        yield running


@pytest.fixture(scope="module")
def module_database(make_database):
    return make_database()


@pytest.fixture
def warehouse_url(module_database):
    """The module's database, emptied: each file is a first run against a fresh warehouse."""
    with psycopg.connect(module_database) as conn:
        conn.execute(f"truncate {', '.join(TABLES)}")
    return module_database


def fetch(server, name: str, content: bytes, workdir) -> tuple[int, bytes]:
    """Serve content as name and read it like the ingest task; (data rows read, staged file)."""
    source = source_of(name)
    server.serve_bytes(name, content, content_type="application/json" if source == "api" else "text/csv; charset=utf-8")
    out = io.BytesIO()
    url = f"{server.url}/{name}"
    with requests.Session() as session:
        if source == "api":
            counts = api_source.fetch(session, url, MAPPINGS[source], out, run_id=RUN_ID, uri=url, policy=POLICY,
                                      max_pages=5, max_bytes=10_000_000, sleep=lambda seconds: None)
        else:
            counts = csv_source.fetch(session, url, MAPPINGS[source], out, run_id=RUN_ID, uri=url, policy=POLICY,
                                      max_bytes=10_000_000, workdir=str(workdir), sleep=lambda seconds: None)
    return counts.records + counts.problems, out.getvalue()


def load(url: str, source: str, staged: bytes) -> None:
    """store_raw → normalize → upsert, each its own transaction, as the DAG's tasks run them."""
    with psycopg.connect(url) as conn:
        warehouse.store_raw(conn, source, io.BytesIO(staged), run_id=RUN_ID, lock_timeout_seconds=5)
        warehouse.normalize(conn, source, rules.Normalization(MAPPINGS[source]), run_id=RUN_ID, full_refresh=False, lock_timeout_seconds=5)
        warehouse.upsert(conn, source, run_id=RUN_ID, lock_timeout_seconds=5)


def loaded_rows(url: str, source: str) -> dict[str, tuple]:
    """source_id → (name, value, description) of the rows this run wrote."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("select source_id, name, value, description from normalized_data"
                            " where source = %s and last_changed_run_id = %s", (source, RUN_ID)).fetchall()
    return {source_id: tuple(rest) for source_id, *rest in rows}


def rejects(url: str, source: str) -> list[tuple]:
    """(stage, source_id, reason, payload) of this run's rejects."""
    with psycopg.connect(url) as conn:
        return conn.execute("select stage, source_id, reason, payload from rejected_records"
                            " where run_id = %s and source = %s order by id", (RUN_ID, source)).fetchall()


def assert_same_items(actual: list, expected: list) -> None:
    """Equal as multisets (the order of rejects within a stage is not part of the contract)."""
    unmatched = list(actual)
    for item in expected:
        assert item in unmatched, f"expected {item!r} among {unmatched!r}"
        unmatched.remove(item)
    assert unmatched == [], f"unexpected {unmatched!r}"


S, N = "store_raw", "normalize"
NOT_UTF8 = "contains bytes that are not valid UTF-8"
NAN_INF = "contains NaN or Infinity, which JSON does not allow"

CASES = [
    # --- CSV: line endings, encodings, quoting --------------------------------------------------------------------
    # UTF-8 BOM before the header, CRLF line ends; '3e2' passes the schema (not the fast path) as 300
    pytest.param("bom_crlf.csv", {"1": "alpha", "2": "beta", "3": "gamma"}, [], id="bom-crlf"),
    # LF, an empty line in the middle (skipped, not a row) and no final newline
    pytest.param("lf.csv", {"1": "alpha", "2": "beta", "3": "gamma"}, [], id="lf"),
    # lone CR line ends, a CR inside a quoted field, an empty line
    pytest.param("lone_cr.csv", {"1": "alpha", "2": "beta", "3": "gamma"}, [], id="lone-cr"),
    # CRLF, LF and CR in one file
    pytest.param("mixed_line_ends.csv", {"1": "alpha", "2": "beta", "3": "gamma"}, [], id="mixed-line-ends"),
    # quoted commas, doubled quotes, LF and CRLF inside quoted fields
    pytest.param("quoted_newlines.csv", {"1": "Smith, Jane", "2": 'say "hi"', "3": "crlf inside", "4": "trailing"},
                 [], id="quoted-newlines"),
    # Latin-1 bytes in a UTF-8 file: in the name, the description and the id (shown as \xNN); real UTF-8 loads
    pytest.param("latin1_served_as_utf8.csv", {"2": "plain", "5": "Zürich"}, [
        (S, "1", f"line 2: {NOT_UTF8}"),
        (S, "3", f"line 4: {NOT_UTF8}"),
        (S, "4\\xb0", f"line 5: {NOT_UTF8}"),
    ], id="latin1-served-as-utf8"),
    # NUL in a field, in the id (shown as \x00) and inside a quoted field
    pytest.param("nul_bytes.csv", {"2": "fine"}, [
        (S, "1", "line 2: contains a NUL byte"),
        (S, "3\\x00", "line 4: contains a NUL byte"),
        (S, "4", "line 5: contains a NUL byte"),
    ], id="nul-bytes"),
    # a 200 KB quoted description with commas, quotes, CR/LF and non-ASCII (past csv's 128 KB default limit)
    pytest.param("200kb_field.csv", {"1": "long", "2": "short"}, [], id="200kb-field"),
    # a quote never closed, junk after a closing quote, the wrong field count after a quote spanning lines, a quote
    # open on the last line: each costs only its own line; a well-quoted field after them loads whole
    pytest.param("open_quotes.csv", {"2": "alpha", "3": 'beta, with "quotes"', "5": "gamma", "7": "delta"}, [
        (S, None, "line 2: malformed CSV: a quote opened on this line runs into line 4: ',' expected after '\"'"),
        (S, None, "line 6: malformed CSV (',' expected after '\"')"),
        (S, None, "line 8: expected 4 fields, got 5 (a quote opened on this line runs to line 9)"),
        (S, None, "line 9: expected 4 fields, got 2"),
        (S, None, "line 11: malformed CSV: a quote opened on this line is still open at the end of the file"),
    ], id="open-quotes"),
    # --- CSV: row shape and ids -----------------------------------------------------------------------------------
    # too few, too many, a lone id, a trailing comma; a quoted comma is one field
    pytest.param("field_counts.csv", {"1": "fine", "5": "a,b"}, [
        (S, None, "line 3: expected 4 fields, got 2"),
        (S, None, "line 4: expected 4 fields, got 5"),
        (S, None, "line 5: expected 4 fields, got 1"),
        (S, None, "line 7: expected 4 fields, got 5"),
    ], id="field-counts"),
    # empty, spaces, a quoted tab and quoted spaces as the id
    pytest.param("blank_ids.csv", {"1": "fine"}, [
        (S, None, "line 3: blank id"),
        (S, None, "line 4: blank id"),
        (S, None, "line 5: blank id"),
        (S, None, "line 6: blank id"),
    ], id="blank-ids"),
    # id 1 three times (the last one padded with spaces): the last occurrence wins
    pytest.param("duplicate_ids.csv", {"1": "third", "2": "only", "3": "other"}, [
        (S, "1", "duplicate source_id 1 in this batch: record 1 is overridden by record 5, the last occurrence"),
        (S, "1", "duplicate source_id 1 in this batch: record 3 is overridden by record 5, the last occurrence"),
    ], id="duplicate-ids"),
    # a 5,000-character id, past PostgreSQL's btree limit: quarantined, not a failed COPY
    pytest.param("long_id.csv", {"1": "fine", "3": "fine"}, [
        (S, None, "line 3: id is longer than 1000 bytes"),
    ], id="long-id"),
    # --- CSV: values ----------------------------------------------------------------------------------------------
    # thousands and decimal separators of every locale are refused, not guessed at
    pytest.param("thousands_separators.csv", {"1": "plain"}, [
        (N, "2", "value: '1,234' is not a number"),
        (N, "3", "value: '1.234,5' is not a number"),
        (N, "4", "value: '1 234' is not a number"),
        (N, "5", "value: '1_000' is not a number"),
        (N, "6", "value: \"1'234\" is not a number"),
        (N, "7", "value: '2,5' is not a number"),
    ], id="thousands-separators"),
    # NaN and infinities in any spelling, an overflow to infinity, an empty value; 1e308 is finite
    pytest.param("nan_infinity.csv", {"1": "finite"}, [
        (N, "2", "value: 'NaN' is not a finite number"),
        (N, "3", "value: 'nan' is not a finite number"),
        (N, "4", "value: 'Infinity' is not a finite number"),
        (N, "5", "value: '-Infinity' is not a finite number"),
        (N, "6", "value: 'inf' is not a finite number"),
        (N, "7", "value: '1e999' is not a finite number"),
        (N, "8", "value: missing"),
    ], id="nan-infinity"),
    # --- CSV: header drift that still names every mapped column ---------------------------------------------------
    # columns in reverse order
    pytest.param("header_reordered.csv", {"1": "alpha", "2": "beta"}, [], id="header-reordered"),
    # unmapped extra columns between and after the mapped ones
    pytest.param("header_extra_column.csv", {"1": "alpha", "2": "beta"}, [], id="header-extra-column"),
    # an unmapped column whose name has a Latin-1 byte: the sanitized name must not poison the rows
    pytest.param("header_latin1_extra_column.csv", {"1": "alpha", "2": "beta"}, [], id="header-latin1-extra-column"),
    # Excel's blank padding columns (',,' on every line): dropped, not a duplicate column name
    pytest.param("header_blank_padding.csv", {"1": "alpha", "2": "beta"}, [], id="header-blank-padding"),
    # --- API ------------------------------------------------------------------------------------------------------
    # no id, no title, no userId, no body (optional), only an id, an empty object
    pytest.param("api_missing_keys.json", {"1": "complete", "5": "no body"}, [
        (S, None, "record 2: missing id field 'id'"),
        (N, "3", "name (field 'title'): missing"),
        (N, "4", "value (field 'userId'): missing"),
        (N, "6", "name (field 'title'): missing; value (field 'userId'): missing"),
        (S, None, "record 7: missing id field 'id'"),
    ], id="api-missing-keys"),
    # ids of every JSON type, numbers as strings, a number as title, booleans, null, a list, a huge int, a NUL
    pytest.param("api_wrong_types.json", {"10": "string id and number", "14": "42", "20": "huge value"}, [
        (S, None, "record 2: id field 'id' is a number, expected a string or integer"),
        (S, None, "record 3: id field 'id' is a boolean, expected a string or integer"),
        (S, None, "record 4: missing id field 'id'"),
        (N, "15", "name (field 'title'): is a boolean, expected text"),
        (N, "16", "value (field 'userId'): 'seven' is not a number"),
        (N, "17", "value (field 'userId'): is a boolean, expected a number"),
        (N, "18", "description (field 'body'): is a list, expected text"),
        (N, "19", "name (field 'title'): missing"),
        (S, "21", "record 12: contains a NUL character"),
    ], id="api-wrong-types"),
    # objects where text, ids and numbers belong; records that are not objects at all
    pytest.param("api_nested_objects.json", {"34": "extra nesting is ignored"}, [
        (N, "30", "name (field 'title'): is an object, expected text"),
        (S, None, "record 2: id field 'id' is an object, expected a string or integer"),
        (N, "32", "value (field 'userId'): is an object, expected a number"),
        (N, "33", "description (field 'body'): is an object, expected text"),
        (S, None, "record 6 is a string, not an object"),
        (S, None, "record 7 is a list, not an object"),
        (S, None, "record 8 is null, not an object"),
    ], id="api-nested-objects"),
    # 1, "1" and " 1 " are one id: the last occurrence wins
    pytest.param("api_duplicate_ids.json", {"1": "third wins", "2": "only"}, [
        (S, "1", "duplicate source_id 1 in this batch: record 1 is overridden by record 4, the last occurrence"),
        (S, "1", "duplicate source_id 1 in this batch: record 3 is overridden by record 4, the last occurrence"),
    ], id="api-duplicate-ids"),
    # empty, spaces and whitespace-escape ids
    pytest.param("api_blank_ids.json", {"1": "fine"}, [
        (S, None, "record 2: id field 'id' is blank"),
        (S, None, "record 3: id field 'id' is blank"),
        (S, None, "record 4: id field 'id' is blank"),
    ], id="api-blank-ids"),
    # bare NaN/Infinity/-Infinity tokens (no JSON column holds them); 1e400 is stored as sent (numeric holds it)
    # and is no finite value; "NaN" as a string is a value error
    pytest.param("api_nan_infinity.json", {"40": "finite"}, [
        (S, "41", f"record 2: {NAN_INF}"),
        (S, "42", f"record 3: {NAN_INF}"),
        (S, "43", f"record 4: {NAN_INF}"),
        (N, "44", "value (field 'userId'): 1e+400 is not a finite number"),
        (N, "45", "value (field 'userId'): 'NaN' is not a finite number"),
    ], id="api-nan-infinity"),
    # a 5,000-character id in a JSON page
    pytest.param("api_long_id.json", {"1": "fine"}, [
        (S, None, "record 2: id is longer than 1000 bytes"),
    ], id="api-long-id"),
]


@pytest.mark.parametrize("name, loaded, rejected", CASES)
def test_every_row_read_is_loaded_or_rejected_with_a_reason(server, warehouse_url, tmp_path, name, loaded, rejected):
    source = source_of(name)
    read, staged = fetch(server, name, content_of(name), tmp_path)
    load(warehouse_url, source, staged)
    rows, quarantined = loaded_rows(warehouse_url, source), rejects(warehouse_url, source)

    assert len(rows) + len(quarantined) == read == len(loaded) + len(rejected)
    assert {source_id: name for source_id, (name, _, _) in rows.items()} == loaded
    assert_same_items([(stage, source_id, reason) for stage, source_id, reason, _ in quarantined], rejected)
    for stage, source_id, reason, payload in quarantined:
        assert reason.strip() and reason.isprintable(), reason
        assert WHERE.match(reason), f"reason names no line, record or field: {reason!r}"
        assert payload is not None, f"{reason}: the record as received is kept for inspection"


@pytest.mark.parametrize("name, missing, header", [
    ("header_renamed_column.csv", "name", "id,title,value,description"),
    ("header_missing_column.csv", "value", "id,name,description"),
])
def test_a_missing_mapped_column_fails_the_file_naming_it_and_loads_nothing(server, warehouse_url, tmp_path, name,
                                                                             missing, header):
    with pytest.raises(SourceError) as failure:
        fetch(server, name, content_of(name), tmp_path)
    assert str(failure.value) == (f"csv: {server.url}/{name}: the header lacks column(s) named in csv_mapping: "
                                  f"{missing} (header: {header}): no record of the file can be loaded. "
                                  f"{csv_source.HEADER_FIX}")
    assert loaded_rows(warehouse_url, "csv") == {} and rejects(warehouse_url, "csv") == []


@pytest.mark.parametrize("name", ["header_latin1_renamed_column.csv", "header_nul_renamed_column.csv"])
def test_a_header_error_with_undecodable_names_can_be_recorded(server, warehouse_url, tmp_path, name):
    with pytest.raises(SourceError) as failure:
        fetch(server, name, content_of(name), tmp_path)
    recorded = Failure.of(failure.value, step="ingest", source="csv")
    assert "the header lacks column(s) named in csv_mapping: name" in recorded.message
    outcome = runs.RunOutcome(run_id=RUN_ID, run_type="manual", started_at=datetime.now(timezone.utc),
                              failures=[recorded])
    with psycopg.connect(warehouse_url) as conn:
        runs.record(conn, outcome)
        (stored,) = conn.execute("select error_message from etl_runs where run_id = %s", (RUN_ID,)).fetchone()
    assert stored == f"ingest[csv]: {recorded.message}"


@pytest.mark.parametrize("name, descriptions", [
    ("quoted_newlines.csv", {"1": "line one\nline two", "2": "a,b,c", "3": "first\r\nsecond",
                             "4": "ends with a newline"}),  # the rules trim surrounding whitespace
    ("lone_cr.csv", {"1": "first", "2": "quoted\rcarriage return", "3": "third"}),
])
def test_quoted_newlines_and_carriage_returns_are_stored_as_sent(server, warehouse_url, tmp_path, name, descriptions):
    _, staged = fetch(server, name, content_of(name), tmp_path)
    load(warehouse_url, "csv", staged)
    assert {key: description for key, (_, _, description) in loaded_rows(warehouse_url, "csv").items()} == descriptions


def test_a_line_with_an_open_quote_is_quarantined_as_its_own_text(server, warehouse_url, tmp_path):
    content = content_of("open_quotes.csv")
    _, staged = fetch(server, "open_quotes.csv", content, tmp_path)
    load(warehouse_url, "csv", staged)
    physical = content.decode().split("\n")
    quarantined = rejects(warehouse_url, "csv")
    assert [payload["raw"] for _, _, _, payload in quarantined] == [
        physical[int(re.match(r"line (\d+):", reason).group(1)) - 1] for _, _, reason, _ in quarantined]
    assert loaded_rows(warehouse_url, "csv")["3"] == ('beta, with "quotes"', 2.0, "first line\nsecond line")


def test_a_200_kb_field_is_stored_whole(server, warehouse_url, tmp_path):
    _, staged = fetch(server, "200kb_field.csv", content_of("200kb_field.csv"), tmp_path)
    load(warehouse_url, "csv", staged)
    text = description_of_200_kb()
    assert len(text.encode()) >= 200_000
    assert loaded_rows(warehouse_url, "csv")["1"] == ("long", 1.0, text)
    with psycopg.connect(warehouse_url) as conn:
        (raw,) = conn.execute("select data ->> 'description' from raw_csv_data where source_id = '1'").fetchone()
    assert raw == text


@pytest.mark.parametrize("name, kept", [("duplicate_ids.csv", ("third", 1.0, "the last occurrence wins")),
                                        ("api_duplicate_ids.json", ("third wins", 1.0, None))])
def test_duplicate_ids_in_one_batch_keep_the_last_occurrence(server, warehouse_url, tmp_path, name, kept):
    source = source_of(name)
    _, staged = fetch(server, name, content_of(name), tmp_path)
    load(warehouse_url, source, staged)
    assert loaded_rows(warehouse_url, source)["1"] == kept
    with psycopg.connect(warehouse_url) as conn:
        (raw,) = conn.execute(f"select data from raw_{source}_data where source_id = '1'").fetchone()
    assert raw[MAPPINGS[source]["name"]] == kept[0]


def test_a_page_that_is_not_utf8_fails_the_api_naming_the_url(server, tmp_path):
    with pytest.raises(SourceError, match=rf"^api: {re.escape(server.url)}/latin1\.json: invalid JSON"):
        fetch(server, "latin1.json", b'[{"id": 1, "title": "caf\xe9", "userId": 1}]', tmp_path)


def test_an_integer_too_long_to_parse_fails_the_api_naming_the_url(server, tmp_path):
    with pytest.raises(SourceError, match=rf"^api: {re.escape(server.url)}/huge\.json: invalid JSON"):
        fetch(server, "huge.json", b'[{"id": 1, "title": "huge", "userId": ' + b"9" * 5000 + b"}]", tmp_path)
