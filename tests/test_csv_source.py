"""csv_source: stage_file on awkward files written to disk, and fetch() end to end from a loopback server."""

import csv
import io
import json
import os
import random

import pytest
import requests
from hypothesis import given, strategies as st
from hypothesis import settings as hypothesis_settings

from sluice import csv_source, http_client, settings
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
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
        f"catalog.csv: the header lacks column(s) named in csv_mapping: {missing} (header: {header.decode()}): no "
        f"record of the file can be loaded. {csv_source.HEADER_FIX}")


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


# A record that fails to parse costs only its first physical line, quarantined with that line's own text.

NEVER_CLOSED = "line {}: malformed CSV: a quote opened on this line is still open at the end of the file"
JUNK_AFTER_QUOTE = "',' expected after '\"'"


def rejected(lines) -> list[tuple[str, str]]:
    return [(line.problem, line.payload) for line in staged.problems(lines)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_an_open_quote_near_the_start_costs_only_its_own_line(tmp_path, newline):
    content = newline.join([HEADER, b'1,w,1.5,"oops', b"2,w,1.5,plain", b"3,w,1.5,plain"]) + newline
    _, lines = stage(tmp_path, content, 3)
    assert rejected(lines) == [(NEVER_CLOSED.format(2), '1,w,1.5,"oops')]
    assert [line.data for line in staged.records(lines)] == [row("2"), row("3")]


@pytest.mark.parametrize("final_newline", [b"\n", b""], ids=["final-newline", "no-final-newline"])
def test_an_open_quote_on_the_last_line_costs_only_that_line(tmp_path, final_newline):
    content = HEADER + b'\n1,w,1.5,plain\n2,w,1.5,plain\n3,w,"oops,1.5,plain' + final_newline
    _, lines = stage(tmp_path, content, 3)
    assert [line.data for line in staged.records(lines)] == [row("1"), row("2")]
    assert rejected(lines) == [(NEVER_CLOSED.format(4), '3,w,"oops,1.5,plain')]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_an_open_quote_before_a_well_quoted_field_leaves_that_field_intact(tmp_path, newline):
    well_quoted = newline.join([b'4,"Smith, Jane","1,5","she said ""hi""', b"and left, twice", b'"'])
    content = newline.join([HEADER, b'1,w,1.5,"oops', b"2,w,1.5,plain", b"3,w,1.5,plain", well_quoted,
                            b"5,w,1.5,plain"]) + newline
    _, lines = stage(tmp_path, content, 5)
    assert rejected(lines) == [
        (f"line 2: malformed CSV: a quote opened on this line runs into line 5: {JUNK_AFTER_QUOTE}", '1,w,1.5,"oops')]
    text = 'she said "hi"' + newline.decode() + "and left, twice" + newline.decode()
    assert [line.data for line in staged.records(lines)] == [
        row("2"), row("3"), row("4", "Smith, Jane", "1,5", text), row("5")]


@pytest.mark.parametrize("bad_lines, problems", [
    ([b'9,"ab"c,1.5,plain'], [("line 3: malformed CSV (',' expected after '\"')", '9,"ab"c,1.5,plain')]),
    ([b'9,w,1.5,"ab" '], [("line 3: malformed CSV (',' expected after '\"')", '9,w,1.5,"ab" ')]),
    ([b'9,w,"two', b'lines"x,plain'], [
        (f"line 3: malformed CSV: a quote opened on this line runs into line 4: {JUNK_AFTER_QUOTE}", '9,w,"two'),
        ("line 4: expected 4 fields, got 2", 'lines"x,plain'),
    ]),
], ids=["junk-after-quote", "space-after-quote", "junk-after-a-quote-spanning-lines"])
def test_a_quoted_field_followed_by_junk_costs_only_its_own_lines(tmp_path, bad_lines, problems):
    content = b"\n".join([HEADER, b"1,w,1.5,plain", *bad_lines, b"3,w,1.5,plain"]) + b"\n"
    _, lines = stage(tmp_path, content, 2 + len(bad_lines))
    assert rejected(lines) == problems
    assert [line.data for line in staged.records(lines)] == [row("1"), row("3")]


def test_a_wrong_field_count_after_spanning_lines_costs_only_the_first_line(tmp_path):
    content = HEADER + b'\n1,w,1.5,"two\n2,w,1.5,plain\n3,w,1.5,plain",extra\n4,w,1.5,plain\n'
    _, lines = stage(tmp_path, content, 4)
    assert rejected(lines) == [
        ("line 2: expected 4 fields, got 5 (a quote opened on this line runs to line 4)", '1,w,1.5,"two'),
        ("line 4: expected 4 fields, got 5", '3,w,1.5,plain",extra'),
    ]
    assert [line.data for line in staged.records(lines)] == [row("2"), row("4")]


def test_an_open_quote_in_undecodable_bytes_keeps_them_visible(tmp_path):
    _, lines = stage(tmp_path, HEADER + b'\n1,caf\xe9,1.5,"oops\n2,w,1.5,plain\n', 2)
    assert rejected(lines) == [(NEVER_CLOSED.format(2), '1,caf\\xe9,1.5,"oops')]
    assert [line.data for line in staged.records(lines)] == [row("2")]


def test_an_open_quote_in_the_header_is_an_error(tmp_path):
    assert stage_error(tmp_path, b'id,name,"value,description\n1,a,1,d\n') == (
        "catalog.csv: the header row is malformed CSV (unexpected end of data)")


ROWS = 20_000
STRAY_QUOTES = {
    # one stray quote: its record reads to the end of the file, then every line after it is read once more
    "near-the-start": (b'2,w,1.5,"oops\n' + b"".join(b"%d,w,1.5,plain\n" % n for n in range(3, ROWS + 2)), 19_999, 1),
    # each line opens a quote: every record would read to the end of the file if it were let to
    "on-every-line": (b'1,w,1.5,"oops\n' * ROWS, 0, ROWS),
    # each line closes a quote and opens one: from any line a record would read to the end of the file
    "closing-and-opening": (b'1,w,1.5,"start\n' + b'a",1,"b\n' * (ROWS - 1), 0, ROWS),
    # the same, closed on the last line: from any line a record would read to the last line, with a field count
    # that depends on the line it began on; only the one from the line before the last has 4 and loads
    "closed-at-the-end": (b'1,w,"start\n' + b'a",1,"b\n' * (ROWS - 2) + b'end",x\n', 1, ROWS - 2),
}


# how many times at most csv may be given each line of a file (its parse, the re-reading of a failed record's
# lines, the field counts of a span's lines)
LINES_FED_PER_LINE = 6  # at most 5 measured (20,000 lines of stray quotes, blocks of 64 characters or 1 MiB)


def lines_fed_to_csv(monkeypatch, *, limit: int):
    """Count the lines csv_source gives csv's readers; past `limit` the parse fails at once. Returns the count."""
    fed = 0

    def counted(lines):
        nonlocal fed
        for line in lines:
            fed += 1
            if fed > limit:
                raise AssertionError(f"csv was given more than {limit} lines: the parse is not linear")
            yield line

    real = csv.reader
    monkeypatch.setattr(csv_source.csv, "reader", lambda lines, **kwargs: real(counted(lines), **kwargs))
    return lambda: fed


@pytest.mark.parametrize("body, loaded, quarantined", STRAY_QUOTES.values(), ids=STRAY_QUOTES.keys())
@pytest.mark.parametrize("block_chars", [64, csv_source.BLOCK_CHARS])
def test_stray_quotes_in_20000_lines_take_linear_time_and_each_costs_its_line(tmp_path, monkeypatch, body, loaded,
                                                                               quarantined, block_chars):
    """Linear: csv is given each line a few times at most, where re-reading each line's record to its end would
    give it about ROWS / 2 times (counted, not timed: the count fails fast and does not depend on the machine)."""
    monkeypatch.setattr(csv_source, "BLOCK_CHARS", block_chars)
    fed = lines_fed_to_csv(monkeypatch, limit=LINES_FED_PER_LINE * (ROWS + 1))
    path = tmp_path / "catalog.csv"
    path.write_bytes(HEADER + b"\n" + body)
    out = io.BytesIO()
    counts = csv_source.stage_file(str(path), CSV, out, run_id="run-1", uri="file:///s", where="catalog.csv")
    assert fed() <= LINES_FED_PER_LINE * (ROWS + 1)
    assert (counts.records, counts.problems) == (loaded, quarantined)
    physical = (HEADER + b"\n" + body).decode().split("\n")
    for line in staged.problems(staged.decode(out.getvalue())):
        line_no = int(line.problem.split(":")[0].removeprefix("line "))
        assert line.payload == physical[line_no - 1]


def reparsed_from_each_line(text: str, width: int) -> list[tuple]:
    """The reference for what stage_file must do, read the slow way: a record is parsed from each start and
    when it fails, its first line is rejected with its text and the next record is parsed from the line after;
    (row, None, None) per record, (None, reason, text) per rejected line. Quadratic, so for small files only."""
    lines = list(io.StringIO(text, newline=""))
    events, index = [], 1  # lines[0] is the header
    while index < len(lines):
        read = []
        reader = csv.reader((read.append(line) or line for line in lines[index:]), strict=True)
        try:
            row, error = next(reader), None
        except StopIteration:
            break
        except csv.Error as exc:
            row, error = None, str(exc)
        start, end = index + 1, index + len(read)
        if error is None and (end == start or len(row) == width):
            if row and (len(row) > 1 or row[0].strip()):  # blank lines are skipped
                events.append((row, None, None))
            index += len(read)
            continue
        if error == "unexpected end of data":
            reason = NEVER_CLOSED.format(start)
        elif error and end == start:
            reason = f"line {start}: malformed CSV ({error})"
        elif error:
            reason = f"line {start}: malformed CSV: a quote opened on this line runs into line {end}: {error}"
        else:
            reason = (f"line {start}: expected {width} fields, got {len(row)}"
                      f" (a quote opened on this line runs to line {end})")
        events.append((None, reason, lines[index].rstrip("\r\n")))
        index += 1
    return events


FRAGMENTS = ["a", "b c", '"q"', '"q, ""r"""', '"', '""', 'x"', '"y', 'x"y', '"x"y', 'u",v,"w', 'u",', ',"w', "",
             '"multi\nline"']


@pytest.mark.parametrize("seed, delimiter", [(0, ","), (1, ","), (2, ","), (3, ","), (4, ";"), (5, "|")])
@pytest.mark.parametrize("block_chars", [1, 40, csv_source.BLOCK_CHARS])
def test_stray_quotes_anywhere_cost_the_same_lines_as_reparsing_from_each_line(tmp_path, monkeypatch, seed,
                                                                                delimiter, block_chars):
    """Another delimiter: the same file with every comma swapped for it reads the same, commas swapped likewise
    (not a tab: a quoted field of just a tab is a blank line, where a quoted comma is not). Blocks of a line
    each, of a few lines, and of the whole file: the records csv reads a block at a time are those read line
    by line, wherever a block ends (inside quotes, within a failed record's span, or on a clean line)."""
    monkeypatch.setattr(csv_source, "BLOCK_CHARS", block_chars)
    def swapped(text):
        return text.replace(",", delimiter)

    rng = random.Random(seed)
    for _ in range(500):
        width = rng.randint(1, 4)
        header = ",".join(f"c{n}" for n in range(width))
        body = "".join(",".join(rng.choices(FRAGMENTS, k=rng.randint(1, 5))) + rng.choice(["\n", "\r\n", "\r"])
                       for _ in range(rng.randint(1, 12)))
        path = tmp_path / "catalog.csv"
        path.write_text(swapped(header + "\n" + body), newline="")
        out = io.BytesIO()
        csv_source.stage_file(str(path), {"source_id": "c0"}, out, run_id="run-1", uri="file:///s", where="c.csv",
                              delimiter=delimiter)
        expected = reparsed_from_each_line(header + "\n" + body, width)
        actual = staged.decode(out.getvalue())
        assert len(actual) == len(expected), (header, body)
        for line, (fields, reason, text) in zip(actual, expected):
            assert line.data is not None or line.payload, f"{line.problem}: the record as received is kept"
            if fields is None:
                assert (line.problem, line.payload) == (reason.replace("',' expected", f"'{delimiter}' expected"), swapped(text)), (header, body)
            elif line.data is not None:
                assert list(line.data.values()) == [swapped(field) for field in fields], (header, body)
            else:  # a row-level problem: the wrong field count on one line, a blank id
                assert line.payload == swapped(",".join(fields)), (header, body)


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
                       f"id, name, value, description (header: sku,title): no record of the file can be loaded. "
                       f"{csv_source.HEADER_FIX}")


# Any text a CSV field can hold once decoded: undecodable bytes kept as surrogates, controls, quotes, backslashes.
FIELD_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)


@given(st.lists(FIELD_TEXT, min_size=1, max_size=5, unique=True).filter(all), st.data())
@hypothesis_settings(max_examples=400, deadline=None)
def test_a_row_joined_as_json_is_the_text_of_its_dict(header, data):
    row = data.draw(st.lists(FIELD_TEXT, min_size=len(header), max_size=len(header)))
    expected = json.dumps(dict(zip(header, row)), ensure_ascii=False, separators=(",", ":"))
    assert csv_source.json_object(csv_source.json_keys(header), row) == expected


def test_headers_with_a_blank_or_repeated_name_take_the_dict():
    assert csv_source.json_keys(["id", "", "name"]) is None
    assert csv_source.json_keys(["id", "name", "name"]) is None
    assert csv_source.json_keys(["id", "näme"]) == ['"id":', '"näme":']
