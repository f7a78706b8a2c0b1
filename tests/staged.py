"""Read a staged-records file back the way PostgreSQL's COPY text format would, for assertions."""

import json
import re
from dataclasses import dataclass, field

_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass
class StagedLine:
    run_id: str
    source: str
    record_no: int
    source_id: str | None
    data: dict | None
    problem: str | None
    payload: str | None
    content_hash: str | None = field(default=None, compare=False)
    # data as staged: the record's own JSON text
    text: str | None = field(default=None, compare=False, repr=False)
    # the declared fields ingest typed (rules.AttributeTyper), as JSON text; None: none typed
    attributes: str | None = field(default=None, compare=False, repr=False)


def _unescape(match: re.Match) -> str:
    octal, hexa, char = match.groups()
    if octal:
        return chr(int(octal, 8))
    if hexa:
        return chr(int(hexa, 16))
    return _SIMPLE.get(char, char)


def copy_field(text: str) -> str | None:
    """One COPY text field: \\N is NULL, backslash escapes as PostgreSQL decodes them."""
    return None if text == "\\N" else _ESCAPE.sub(_unescape, text)


def decode(staged: bytes) -> list[StagedLine]:
    """Every staged line, checked to be UTF-8 with exactly nine tab-separated fields."""
    lines = []
    for raw in staged.decode("utf-8").split("\n")[:-1]:
        assert "\r" not in raw, f"unescaped carriage return in staged line {raw!r}"
        fields = [copy_field(field) for field in raw.split("\t")]
        assert len(fields) == 9, f"staged line has {len(fields)} fields, expected 9: {raw!r}"
        run_id, source, record_no, source_id, data, problem, payload, content_hash, attributes = fields
        lines.append(StagedLine(run_id, source, int(record_no), source_id,
                                None if data is None else json.loads(data), problem, payload, content_hash, data,
                                attributes))
    assert staged.endswith(b"\n") or not staged
    return lines


def records(lines: list[StagedLine]) -> list[StagedLine]:
    return [line for line in lines if line.problem is None]


def problems(lines: list[StagedLine]) -> list[StagedLine]:
    return [line for line in lines if line.problem is not None]
