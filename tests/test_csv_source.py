"""csv_source: stage_file on awkward files written to disk, and fetch() end to end from a loopback server."""

import io
import json
import os

import pytest
import requests

from sluice import csv_source, http_client, settings
from sluice.devtools import sample_data
from sluice.devtools.source_server import Fault, SourceServer
from sluice.errors import SourceError
from tests import staged

CSV = settings.DEFAULT_CSV_MAPPING
HEADER = b"id,name,value,description"
POLICY = http_client.RetryPolicy(attempts=2, timeout=5.0, backoff_base=0.01, backoff_max=0.01)


def stage(tmp_path, content: bytes, data_rows: int, field_map=CSV):
    """Stage content as a CSV file; every data row must come out as exactly one record or problem."""
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    out = io.BytesIO()
    counts = csv_source.stage_file(str(path), field_map, out, run_id="run-1", uri="file:///s", where="catalog.csv")
    lines = staged.decode(out.getvalue())
    assert counts.records + counts.problems == data_rows == len(lines)
    assert (counts.records, counts.problems) == (len(staged.records(lines)), len(staged.problems(lines)))
    assert [line.record_no for line in lines] == list(range(1, data_rows + 1))
    assert counts.bytes == len(content)
    return counts, lines


def stage_error(tmp_path, content: bytes, field_map=CSV) -> str:
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError) as excinfo:
        csv_source.stage_file(str(path), field_map, io.BytesIO(), run_id="run-1", uri="file:///s", where="catalog.csv")
    return str(excinfo.value)


def row(source_id, name="w", value="1.5", description="plain"):
    return {"id": source_id, "name": name, "value": value, "description": description}


def test_clean_file_stages_one_record_per_row(tmp_path):
    counts, lines = stage(tmp_path, HEADER + b"\n1,alpha,2.5,first\n2,beta,-3,second\n", 2)
    assert (counts.source, counts.uri, counts.skipped_blank_lines) == ("csv", "file:///s", 0)
    assert [(line.run_id, line.source, line.source_id, line.data) for line in lines] == [
        ("run-1", "csv", "1", row("1", "alpha", "2.5", "first")),
        ("run-1", "csv", "2", row("2", "beta", "-3", "second")),
    ]


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    _, lines = stage(tmp_path, b"\xef\xbb\xbf" + HEADER + b"\r\n7,w,1.5,plain\r\n", 1)
    assert lines[0].data == row("7")


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
def test_line_endings(tmp_path, newline, final_newline):
    content = newline.join([HEADER, b"1,w,1.5,plain", b"2,w,1.5,plain", b"3,w,1.5,plain"])
    counts, lines = stage(tmp_path, content + (newline if final_newline else b""), 3)
    assert [line.data for line in lines] == [row("1"), row("2"), row("3")]
    assert counts.problems == 0


def test_mixed_line_endings_in_one_file(tmp_path):
    _, lines = stage(tmp_path, HEADER + b"\r\n1,w,1.5,plain\n2,w,1.5,plain\r3,w,1.5,plain\r\n", 3)
    assert [line.source_id for line in lines] == ["1", "2", "3"]


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_quoted_commas_quotes_and_newlines_stay_inside_the_field(tmp_path, newline):
    body = b'1,"Smith, Jane","1,5","she said ""hi""' + newline + b'and left"' + newline + b"2,w,1.5,plain" + newline
    _, lines = stage(tmp_path, HEADER + newline + body, 2)
    assert lines[0].data == row("1", "Smith, Jane", "1,5", 'she said "hi"' + newline.decode() + "and left")
    assert lines[1].data == row("2")


def test_line_numbers_count_physical_lines(tmp_path):
    content = HEADER + b'\n1,w,1.5,"two\nlines"\n\n2,short\n'
    _, lines = stage(tmp_path, content, 2)
    assert lines[1].problem == "line 5: expected 4 fields, got 2"


def test_empty_values_load_as_empty_strings(tmp_path):
    _, lines = stage(tmp_path, HEADER + b'\n1,,,\n2,"","",""\n', 2)
    assert [line.data for line in lines] == [row("1", "", "", ""), row("2", "", "", "")]


@pytest.mark.parametrize("content, blank_lines", [
    (HEADER + b"\n\n1,w,1.5,plain\n\n\n2,w,1.5,plain\n\n", 4),
    (HEADER + b"\r\n\r\n1,w,1.5,plain\r\n\r\n2,w,1.5,plain\r\n", 2),
    (HEADER + b"\r\r1,w,1.5,plain\r2,w,1.5,plain\r\r", 2),
])
def test_blank_lines_are_skipped_and_counted(tmp_path, content, blank_lines):
    counts, lines = stage(tmp_path, content, 2)
    assert counts.skipped_blank_lines == blank_lines
    assert [line.source_id for line in lines] == ["1", "2"]


@pytest.mark.parametrize("bad_line, problem, payload", [
    (b"9,short", "line 3: expected 4 fields, got 2", "9,short"),
    (b"9", "line 3: expected 4 fields, got 1", "9"),
    (b"9,a,1,d,extra", "line 3: expected 4 fields, got 5", "9,a,1,d,extra"),
    (b'9,"a,b",1,d,', "line 3: expected 4 fields, got 5", "9,a,b,1,d,"),
    (b",nameless,1,d", "line 3: blank id", ",nameless,1,d"),
    (b"   ,nameless,1,d", "line 3: blank id", "   ,nameless,1,d"),
    (b'"\t",nameless,1,d', "line 3: blank id", "\t,nameless,1,d"),
])
def test_bad_rows_are_problems_and_their_neighbours_load(tmp_path, bad_line, problem, payload):
    counts, lines = stage(tmp_path, HEADER + b"\n1,w,1.5,plain\n" + bad_line + b"\n3,w,1.5,plain\n", 3)
    assert (counts.records, counts.problems) == (2, 1)
    assert (lines[1].source_id, lines[1].data, lines[1].problem, lines[1].payload) == (None, None, problem, payload)
    assert [line.source_id for line in staged.records(lines)] == ["1", "3"]


def test_blank_id_problem_names_the_mapped_column(tmp_path):
    field_map = {"source_id": "sku", "name": "title"}
    _, lines = stage(tmp_path, b"sku,title\n,nameless\n", 1, field_map=field_map)
    assert lines[0].problem == "line 2: blank sku"


def test_id_is_trimmed(tmp_path):
    _, lines = stage(tmp_path, HEADER + b"\n  42  ,w,1.5,plain\n", 1)
    assert lines[0].source_id == "42"
    assert lines[0].data["id"] == "  42  "


def test_latin1_bytes_quarantine_that_row_only(tmp_path):
    content = HEADER + b"\n1,w,1.5,plain\n2,caf\xe9,1.5,plain\n3,w,1.5,plain\n"
    counts, lines = stage(tmp_path, content, 3)
    assert (counts.records, counts.problems) == (2, 1)
    assert (lines[1].source_id, lines[1].problem) == ("2", "line 3: contains bytes that are not valid UTF-8")
    assert "caf" in lines[1].payload
    assert [line.data for line in staged.records(lines)] == [row("1"), row("3")]


def test_multibyte_utf8_loads(tmp_path):
    _, lines = stage(tmp_path, HEADER + "\n1,Zürich Ærø,1.5,façade ✓\n".encode(), 1)
    assert lines[0].data == row("1", "Zürich Ærø", "1.5", "façade ✓")


@pytest.mark.parametrize("bad_line, source_id", [
    (b"2,a\x00b,1.5,plain", "2"),
    (b"2\x00,w,1.5,plain", "2\\x00"),
])
def test_nul_byte_is_a_problem(tmp_path, bad_line, source_id):
    counts, lines = stage(tmp_path, HEADER + b"\n1,w,1.5,plain\n" + bad_line + b"\n3,w,1.5,plain\n", 3)
    assert (counts.records, counts.problems) == (2, 1)
    assert (lines[1].source_id, lines[1].problem) == (source_id, "line 3: contains a NUL byte")
    assert "\\x00" in lines[1].payload and "\x00" not in lines[1].payload


def test_200_kb_field_loads(tmp_path):
    long_text = "ab, \"c\"\n" * 25_600
    quoted = long_text.replace('"', '""')
    counts, lines = stage(tmp_path, HEADER + f'\n1,w,1.5,"{quoted}"\n2,w,1.5,plain\n'.encode(), 2)
    assert counts.problems == 0
    assert lines[0].data["description"] == long_text and len(long_text) >= 200_000


@pytest.mark.parametrize("header, data_line", [
    pytest.param(b"description,value,name,id", b"plain,1.5,widget,1", id="reordered"),
    pytest.param(b"id,extra,name,value,description,more", b"1,x,widget,1.5,plain,y", id="extra-columns"),
    pytest.param(b" id , name,value ,description ", b"1,widget,1.5,plain", id="padded-names"),
])
def test_header_drift_still_loads(tmp_path, header, data_line):
    _, lines = stage(tmp_path, header + b"\n" + data_line + b"\n", 1)
    assert lines[0].source_id == "1"
    assert {key: lines[0].data[key] for key in CSV.values()} == row("1", "widget")


@pytest.mark.parametrize("header, missing", [
    (b"id,name", "value, description"),
    (b"ID,name,value,description", "id"),
    (b"identifier,title,amount,description", "id, name, value"),
])
def test_missing_mapped_column_is_an_error_naming_it(tmp_path, header, missing):
    assert stage_error(tmp_path, header + b"\n1,a,1,d\n") == (
        f"catalog.csv: the header lacks column(s) named in csv_mapping: {missing} (header: {header.decode()})")


@pytest.mark.parametrize("content", [HEADER, HEADER + b"\r\n", HEADER + b"\n\n\n"])
def test_header_only_file_stages_nothing(tmp_path, content):
    counts, _ = stage(tmp_path, content, 0)
    assert (counts.records, counts.problems) == (0, 0)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"])
def test_file_without_header_is_an_error(tmp_path, content):
    assert stage_error(tmp_path, content) == "catalog.csv: no header row"


@pytest.mark.parametrize("header, duplicates", [
    (b"id,name,value,description,name", "name"),
    (b"id,name,value,description,id, value", "id, value"),
    (b"id,name,value,description,note,note", "note"),
])
def test_duplicate_header_names_are_an_error(tmp_path, header, duplicates):
    assert stage_error(tmp_path, header + b"\n") == f"catalog.csv: duplicate column name(s) in the header: {duplicates}"


def test_unterminated_quote_does_not_swallow_the_following_rows_silently(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_bytes(HEADER + b'\n1,w,1.5,"oops\n2,w,1.5,plain\n3,w,1.5,plain\n')
    out = io.BytesIO()
    counts = csv_source.stage_file(str(path), CSV, out, run_id="run-1", uri="file:///s", where="catalog.csv")
    lines = staged.decode(out.getvalue())
    assert counts.problems >= 1
    assert all("2,w,1.5,plain" not in json.dumps(line.data) for line in staged.records(lines))


# fetch(): download to disk through http_client, then stage_file.

@pytest.fixture(scope="module")
def server():
    with SourceServer() as running:
        running.httpd.handle_error = lambda request, client_address: None  # clients here hang up on purpose
        yield running


def fetch(server, path, workdir, *, max_bytes=10_000_000, field_map=CSV):
    out = io.BytesIO()
    with requests.Session() as session:
        counts = csv_source.fetch(session, f"{server.url}/{path}", field_map, out, run_id="run-1", uri="file:///s",
                                  policy=POLICY, max_bytes=max_bytes, workdir=str(workdir), sleep=lambda s: None)
    return counts, staged.decode(out.getvalue())


def fetch_error(server, path, workdir, **kwargs) -> str:
    with pytest.raises(SourceError) as excinfo:
        fetch(server, path, workdir, **kwargs)
    assert os.listdir(workdir) == []  # no half-downloaded file left behind
    return str(excinfo.value)


def test_fetch_stages_a_published_csv_and_removes_the_download(server, tmp_path):
    server.serve_bytes("catalog.csv", sample_data.csv_bytes(60, bad_every=7))
    counts, lines = fetch(server, "catalog.csv", tmp_path)
    expected = list(sample_data.csv_rows(60, bad_every=7))
    assert counts.records + counts.problems == 60 == len(lines)
    assert [line.problem for line in staged.problems(lines)] == [
        f"line {n}: {'blank id' if len(cells) == 4 else 'expected 4 fields, got 2'}"
        for n, cells in enumerate(expected, start=2) if len(cells) != 4 or not cells[0]
    ]
    assert counts.problems == 4  # of the 8 bad rows, the blank ids and short rows; the rest are for the rules
    assert [line.data for line in staged.records(lines)] == [
        dict(zip(CSV.values(), cells)) for cells in expected if len(cells) == 4 and cells[0]]
    assert counts.bytes == len(sample_data.csv_bytes(60, bad_every=7))
    assert os.listdir(tmp_path) == []


def test_fetch_retries_a_503_before_downloading(server, tmp_path):
    server.serve_bytes("catalog.csv", HEADER + b"\n1,w,1.5,plain\n")
    server.add_faults("catalog.csv", Fault(503))
    counts, _ = fetch(server, "catalog.csv", tmp_path)
    assert counts.records == 1
    assert len(server.routes["catalog.csv"].hits) == 2


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/xhtml+xml", "TEXT/HTML"])
def test_fetch_refuses_an_html_page(server, tmp_path, content_type):
    server.serve_bytes("catalog.csv", b"<html><body>Please log in</body></html>", content_type=content_type)
    assert fetch_error(server, "catalog.csv", tmp_path) == (
        f"csv: {server.url}/catalog.csv served {content_type.lower()}, not CSV")


def test_fetch_refuses_an_empty_body(server, tmp_path):
    server.serve_bytes("catalog.csv", b"")
    assert fetch_error(server, "catalog.csv", tmp_path) == (
        f"csv: {server.url}/catalog.csv returned an empty body (not even a header row)")


def test_fetch_refuses_a_truncated_download(server, tmp_path):
    server.serve_bytes("catalog.csv", b"")
    server.add_faults("catalog.csv", Fault(200, body=sample_data.csv_bytes(500), truncate_to=4000,
                                           headers={"Content-Type": "text/csv"}))
    assert fetch_error(server, "catalog.csv", tmp_path).startswith(f"csv: {server.url}/catalog.csv body truncated")


def test_fetch_refuses_a_file_over_max_bytes(server, tmp_path):
    content = sample_data.csv_bytes(100)
    server.serve_bytes("catalog.csv", content)
    assert fetch_error(server, "catalog.csv", tmp_path, max_bytes=len(content) - 1) == (
        f"csv: {server.url}/catalog.csv exceeds SLUICE_MAX_BYTES ({len(content) - 1} bytes)")


def test_fetch_header_error_names_the_url(server, tmp_path):
    server.serve_bytes("catalog.csv", b"sku,title\n1,a\n")
    message = fetch_error(server, "catalog.csv", tmp_path)
    assert message == (f"csv: {server.url}/catalog.csv: the header lacks column(s) named in csv_mapping: "
                       "id, name, value, description (header: sku,title)")
