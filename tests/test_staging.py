"""StageWriter: COPY text lines that PostgreSQL reads back as exactly what was staged."""

import io

import pytest
from hypothesis import given, strategies as st

from sluice import staging
from sluice.staging import StageWriter
from tests import staged

AWKWARD_TEXT = [
    pytest.param("tab\there", id="tab"),
    pytest.param("line one\nline two", id="newline"),
    pytest.param("carriage\rreturn", id="carriage-return"),
    pytest.param("windows\r\nline end", id="crlf"),
    pytest.param("C:\\temp\\new", id="backslashes"),
    pytest.param("\\N", id="backslash-N-is-text-not-null"),
    pytest.param("\\", id="lone-backslash"),
    pytest.param('quote " and \\" escaped quote', id="quotes"),
    pytest.param("Zürich Ærø façade ✓", id="non-ascii"),
]


def write(action) -> list[staged.StagedLine]:
    out = io.BytesIO()
    writer = StageWriter(out, "run\t1\\x", "api")
    action(writer)
    return staged.decode(out.getvalue())


@pytest.mark.parametrize("text", AWKWARD_TEXT)
def test_record_round_trips_awkward_text_in_id_and_data(text):
    data = {"id": text, "nested": {text: [text]}}
    [line] = write(lambda writer: writer.record(1, text, data, where="record 1"))
    assert (line.run_id, line.source, line.record_no) == ("run\t1\\x", "api", 1)
    assert line.source_id == text
    assert line.data == data
    assert (line.problem, line.payload) == (None, None)


@pytest.mark.parametrize("text", AWKWARD_TEXT)
def test_problem_round_trips_awkward_text_in_reason_and_payload(text):
    [line] = write(lambda writer: writer.problem(7, text, f"line 7: {text}", text))
    assert (line.record_no, line.source_id, line.data) == (7, text, None)
    assert line.problem == f"line 7: {text}"
    assert line.payload == text


def test_problem_without_id_stages_null_id():
    [line] = write(lambda writer: writer.problem(3, None, "record 3: missing id field 'id'", "{}"))
    assert line.source_id is None
    assert line.problem == "record 3: missing id field 'id'"


@pytest.mark.parametrize("data", [
    pytest.param({"name": "a\x00b"}, id="in-value"),
    pytest.param({"a\x00": "x"}, id="in-key"),
    pytest.param({"deep": [{"x": "\x00"}]}, id="nested"),
    pytest.param({"name": "\\\x00"}, id="after-backslash"),
])
def test_nul_character_in_json_becomes_problem_row(data):
    [line] = write(lambda writer: writer.record(4, "k1", data, where="line 5"))
    assert line.problem == "line 5: contains a NUL character"
    assert (line.source_id, line.data) == ("k1", None)
    assert "\\u0000" in line.payload


@pytest.mark.parametrize("text", [
    pytest.param("\\u0000", id="escaped-backslash-then-u0000"),
    pytest.param("\\\\u0000", id="two-backslashes-then-u0000"),
])
def test_text_that_merely_looks_like_an_escaped_nul_is_a_record(text):
    [line] = write(lambda writer: writer.record(1, "k1", {"name": text}, where="record 1"))
    assert line.problem is None
    assert line.data == {"name": text}


def test_lone_surrogate_becomes_problem_row_not_valid_utf8():
    [line] = write(lambda writer: writer.record(2, "k2", {"name": "caf\udce9"}, where="line 3"))
    assert line.problem == "line 3: contains bytes that are not valid UTF-8"
    assert line.data is None
    assert "caf" in line.payload


def test_lone_surrogate_in_id_of_problem_row_is_still_valid_utf8():
    [line] = write(lambda writer: writer.record(2, "id\udce9", {"id": "id\udce9"}, where="line 3"))
    assert line.problem == "line 3: contains bytes that are not valid UTF-8"
    assert line.source_id.startswith("id\\")


def test_undecodable_byte_shown_as_hex_byte_in_payload():
    [line] = write(lambda writer: writer.record(2, "k2", {"name": "caf\udce9"}, where="line 3"))
    assert "caf\\xe9" in line.payload


def test_nul_in_problem_payload_is_shown_as_text():
    [line] = write(lambda writer: writer.problem(1, "a\x00", "line 2: contains a NUL byte", "a\x00,b"))
    assert line.source_id == "a\\x00"
    assert line.payload == "a\\x00,b"


def test_counts_follow_what_was_written():
    def stage(writer):
        writer.record(1, "1", {"id": 1}, where="record 1")
        writer.problem(2, None, "record 2: missing id field 'id'", "{}")
        writer.record(3, "3", {"id": "\x00"}, where="record 3")
        writer.record(4, "4", {"id": 4}, where="record 4")
    out = io.BytesIO()
    writer = StageWriter(out, "r", "csv")
    stage(writer)
    lines = staged.decode(out.getvalue())
    assert (writer.records, writer.problems) == (2, 2)
    assert [line.record_no for line in staged.records(lines)] == [1, 4]
    assert [line.record_no for line in staged.problems(lines)] == [2, 3]


class _CountingFile:
    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return len(data)


def test_blocks_keep_every_byte_in_order_in_few_writes():
    target = _CountingFile()
    out = staging.Blocks(target, block_bytes=64 * 1024)
    lines = [f"{n}\t{'x' * (n % 300)}\n".encode() for n in range(20_000)]
    for line in lines:
        assert out.write(line) == len(line)
    assert b"".join(target.writes) != b"".join(lines)  # the tail is still gathered...
    out.flush()
    assert b"".join(target.writes) == b"".join(lines)  # ...until flush
    total = sum(map(len, lines))
    assert len(target.writes) <= total // (64 * 1024) + 1, len(target.writes)
    out.flush()  # nothing gathered: nothing written
    assert b"".join(target.writes) == b"".join(lines)


def ascending(ids) -> bool:
    writer = StageWriter(io.BytesIO(), "run-1", "csv")
    for number, source_id in enumerate(ids, 1):
        writer.record(number, source_id, {"id": source_id}, where=f"record {number}")
    return writer.ids_ascending


@pytest.mark.parametrize(("ids", "expected"), [
    pytest.param(["1", "2", "9", "10", "11", "99", "100", "1000000"], True, id="integers-in-numeric-order"),
    pytest.param(["b", "ab"], True, id="a-longer-id-comes-after-whatever-its-text"),
    pytest.param(["ab", "b"], False, id="a-shorter-id-after-a-longer-one"),
    pytest.param(["a", "b", "aa", "ab"], True, id="text-by-length-then-bytes"),
    pytest.param(["1", "3", "2"], False, id="one-out-of-order"),
    pytest.param(["1", "2", "2", "3"], False, id="a-duplicate"),
    pytest.param(["10", "9"], False, id="numerically-descending"),
    pytest.param(["7"], True, id="one-record"),
    pytest.param([], True, id="no-record"),
])
def test_ids_ascending_says_whether_each_id_came_after_the_one_before(ids, expected):
    assert ascending(ids) is expected


@given(st.lists(st.text(alphabet="0129ab", min_size=1, max_size=4), max_size=30))
def test_ascending_ids_are_never_duplicates(ids):
    if ascending(ids):
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids, key=lambda i: (len(i), i))


def test_a_quarantined_record_does_not_count_for_the_order():
    writer = StageWriter(io.BytesIO(), "run-1", "csv")
    writer.record(1, "1", {"id": "1"}, where="record 1")
    writer.record(2, "1", {"id": "1", "bad": "nul \x00"}, where="record 2")  # quarantined: not staged
    writer.record(3, "2", {"id": "2"}, where="record 3")
    assert (writer.records, writer.problems, writer.ids_ascending) == (2, 1, True)
