"""The staged-records file: one line per source record in COPY text format, loaded by store_raw.

Columns: run_id, source, record_no, source_id, data (JSON), problem, payload, content_hash (md5 of the
JSON), attributes (the declared fields typed by ingest, rules.AttributeTyper: JSON, or null when the schema is to
judge the record or the source declares none). data is the record's own text: an API record exactly as the source spelled it (record_text), a CSV
row as Sluice encodes it. A record that cannot be stored (no id, wrong field count, bytes that are not UTF-8,
a NUL, text PostgreSQL's jsonb refuses) has a problem and its raw text as payload instead of data, so
store_raw can quarantine it with its reason.
"""

import datetime
import decimal
import hashlib
import json
import logging
import pathlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO

from sluice.progress import REASONS_SHOWN

log = logging.getLogger(__name__)

COPY_COLUMNS = "run_id, source, record_no, source_id, data, problem, payload, content_hash, attributes"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# JSON escapes a NUL as \u0000, which jsonb refuses; an even run of backslashes before it is literal text.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
NULL = "\\N"
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
# readable part of a run's folder name; the hash after it keeps names unique however long the id
READABLE_NAME_CHARS = 80


# JSON of every record, built once: json.dumps would build an encoder per call (a third of the encoding time)
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# btree index entries are limited to about 2.7 KB; a longer id would fail the whole COPY
MAX_ID_BYTES = 1000
# ids of at most this many characters fit MAX_ID_BYTES in any encoding (4 UTF-8 bytes per character at most)
_SHORT_ID = MAX_ID_BYTES // 4
# staged lines are gathered into blocks of this size before they are written (see Blocks)
BLOCK_BYTES = 1024 * 1024
# What PostgreSQL's numeric (and so jsonb) holds: at most 16383 digits after the point, and a value below
# 10**131072. json accepts any number; normalize reads the raw text as jsonb, so a record beyond either is a problem.
NUMERIC_MAX_SCALE = 16383
NUMERIC_MAX_ADJUSTED = 131071
_INFINITY = float("inf")


def copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


@dataclass
class StageCounts:
    """What a source's reader staged: a reference to the staged file and counts, no rows (see results.Ingested)."""

    source: str
    uri: str
    records: int = 0
    problems: int = 0
    pages: int = 0
    bytes: int = 0
    skipped_blank_lines: int = 0
    # every staged id came after the one before it (StageWriter.ids_ascending): the batch has no duplicate
    # ids, so store_raw need not look for them. False when the reader does not say
    ids_ascending: bool = False
    # the read had every record the source holds, so the rows whose records it lacks are gone (delete_missing);
    # False when it ended short of the source's own count
    whole_read: bool = True
    # per mapped or declared field, its present values' JSON types counted (sluice.type_mix; {}: not measured, as for
    # a CSV source, whose values are all text)
    json_types: dict = field(default_factory=dict)
    # the input key (rules.AttributeTyper.key) of the rules that typed the staged attributes; None: none typed
    attributes_key: str | None = None
    # sha256 of the source's entry (FetchRequest.file_key) and the file's bytes, taken while it downloaded; None: not
    # a file read whole (an API)
    digest: str | None = None
    # the file equals the source's last complete load (FetchRequest.unchanged): the staged file holds the source file
    # itself, not staged lines, and the counts are that load's (store_raw copies it, or stages the file after all)
    unchanged: bool = False


class StageWriter:
    """Writes staged lines for one source of one run."""

    def __init__(self, out: BinaryIO, run_id: str, source: str, *, encoding: str = "UTF-8"):
        self._out = out
        self._encoding = encoding  # what the source's text was decoded from, for the problem of bytes that were not
        self._prefix = f"{copy_text(run_id)}\t{source}\t"
        self._prefix_bytes = self._prefix.encode("utf-8")
        self.records = 0
        self.problems = 0
        self.first_problems: list[str] = []  # for the task log: the reasons of the first few
        # Whether each staged id came after the one before in (length, text) order, which for plain integers
        # is their numeric order: ids in strictly ascending order are distinct. Exports sorted by id (the
        # usual case) are known free of duplicates without a GROUP BY over the batch in PostgreSQL.
        self.ids_ascending = True
        self._last_id = ""
        # set by parse_float and parse_constant: a number decoded since the last record_text may be one that
        # jsonb refuses, so that record's text is checked whole (the usual record has none and is not)
        self._odd_number = False

    def tally(self, counts: StageCounts) -> None:
        """Put what this writer staged into the reader's counts."""
        counts.records, counts.problems, counts.ids_ascending = self.records, self.problems, self.ids_ascending

    def record(self, record_no: int, source_id: str, data: dict, *, where: str, attributes: str | None = None) -> None:
        try:
            text = _JSON.encode(data)
        except ValueError:  # NaN or Infinity, which Python's json accepts and PostgreSQL's jsonb refuses
            if not self._id_too_long(record_no, source_id, where):
                self.problem(record_no, source_id, f"{where}: contains NaN or Infinity, which JSON does not allow",
                             repr(data)[:10000])
            return
        self._write(record_no, source_id, text, where, attributes)

    def parse_float(self, spelling: str) -> float:
        """json's parse_float for the decoder that reads the records given to record_text: the float json.loads
        gives, noting a spelling that may be beyond numeric's range (a float overflows or underflows long before)."""
        value = float(spelling)
        if (value == _INFINITY or value == -_INFINITY or len(spelling) > NUMERIC_MAX_SCALE
                or (not value and ("e" in spelling or "E" in spelling))):
            self._odd_number = True
        return value

    def parse_constant(self, name: str) -> float:
        """json's parse_constant for the same decoder: NaN and Infinity, which no JSON column holds, are noted."""
        self._odd_number = True
        return float(name)

    def record_text(self, record_no: int, source_id: str, text: str, *, where: str,
                    attributes: str | None = None) -> None:
        """An API record's own JSON text as the source sent it (json_stream.Item.text), decoded with this writer's
        parse_float and parse_constant: staged verbatim, hashed as it is. No re-encoding: a record's key order,
        whitespace and number spellings reach the raw table as they came."""
        problem = None
        if self._odd_number:
            self._odd_number = False
            problem = _numbers_refused(text)
        if problem is None and ("\\ud" in text or "\\uD" in text):
            problem = _lone_surrogate(text)
        if problem is not None:
            if not self._id_too_long(record_no, source_id, where):
                self.problem(record_no, source_id, f"{where}: {problem}", text)
            return
        self._write(record_no, source_id, text, where, attributes, spaced=True)

    def record_json(self, record_no: int, source_id: str, text: str, *, line_no: int,
                    attributes: str | None = None) -> None:
        """A CSV record already encoded as JSON, exactly as record() would encode it (csv_source.stage_file);
        line_no: its line in the file, which a problem's reason names."""
        self._write(record_no, source_id, text, line_no, attributes)

    def _id_too_long(self, record_no: int, source_id: str, where: str | int) -> bool:
        if len(source_id) > _SHORT_ID and len(source_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            self.problem(record_no, None, f"{_named(where)}: id is longer than {MAX_ID_BYTES} bytes", source_id[:200])
            return True
        return False

    def _write(self, record_no: int, source_id: str, text: str, where: str | int, attributes: str | None = None, *,
               spaced: bool = False) -> None:
        """The hot path of every record: a million records cost a second here, so the checks that rarely
        fail come first in their cheapest form, and `where` (a CSV line number, or the text naming a record)
        becomes text only for a problem. spaced: the text may hold tabs, newlines and carriage returns (the
        whitespace of a source's JSON), which COPY's text format escapes. attributes: JSON text without raw
        control characters (rules.AttributeTyper writes them escaped), so only its backslashes need escaping."""
        if len(source_id) > _SHORT_ID and self._id_too_long(record_no, source_id, where):
            return
        # the plain search first: the regular expression (with its look-behind) costs 5 µs a record
        if "\\u0000" in text and _JSON_NUL.search(text):
            self.problem(record_no, source_id, f"{_named(where)}: contains a NUL character", text)
            return
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            self.problem(record_no, source_id,
                         f"{_named(where)}: contains bytes that are not valid {self._encoding}", text)
            return
        if self.ids_ascending:
            last = self._last_id
            if len(source_id) > len(last) or (len(source_id) == len(last) and source_id > last):
                self._last_id = source_id
            else:
                self.ids_ascending = False
        content_hash = hashlib.md5(encoded, usedforsecurity=False).hexdigest().encode("ascii")
        # an id of letters and digits (the usual one) has nothing to escape, and the test is 5× cheaper
        sid = source_id if source_id.isalnum() else copy_text(source_id)
        # bytes from here: the JSON is encoded once, for its hash and for the line
        escaped = encoded.replace(b"\\", b"\\\\")
        if spaced and (b"\n" in escaped or b"\t" in escaped or b"\r" in escaped):
            escaped = escaped.replace(b"\n", b"\\n").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
        typed = b"\\N" if attributes is None else attributes.encode("utf-8").replace(b"\\", b"\\\\")
        self._out.write(b"%s%d\t%s\t%s\t\\N\t\\N\t%s\t%s\n" % (
            self._prefix_bytes, record_no, sid.encode("utf-8"), escaped, content_hash, typed))
        self.records += 1

    def problem(self, record_no: int, source_id: str | None, problem: str, payload: str) -> None:
        sid = NULL if source_id is None else copy_text(printable(source_id))
        line = (f"{self._prefix}{record_no}\t{sid}\t{NULL}\t{copy_text(problem)}\t{copy_text(printable(payload))}"
                f"\t{NULL}\t{NULL}\n")
        self._out.write(line.encode("utf-8"))
        self.problems += 1
        if len(self.first_problems) < REASONS_SHOWN:
            self.first_problems.append(problem)


class Blocks:
    """A staged file's writer that gathers the small writes of StageWriter into blocks of BLOCK_BYTES.

    A file from ObjectStoragePath costs about 7 µs a write (Airflow wraps each call to track lineage): 7 s a
    million records written one by one. flush() writes what is gathered; call it before closing the file."""

    def __init__(self, out: BinaryIO, block_bytes: int = BLOCK_BYTES):
        self._out = out
        self._block_bytes = block_bytes
        self._parts: list[bytes] = []
        self._gathered = 0

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        self._gathered += len(data)
        if self._gathered >= self._block_bytes:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._parts:
            self._out.write(b"".join(self._parts))
            self._parts.clear()
            self._gathered = 0


class _Refused(ValueError):
    pass


def _refuse_constant(name: str):
    raise _Refused("contains NaN or Infinity, which JSON does not allow")


def _refuse_beyond_numeric(spelling: str) -> None:
    number = decimal.Decimal(spelling)
    if -number.as_tuple().exponent > NUMERIC_MAX_SCALE or (number and number.adjusted() > NUMERIC_MAX_ADJUSTED):
        shown = spelling if len(spelling) <= 40 else f"{spelling[:20]}...({len(spelling)} characters)"
        raise _Refused(f"number {shown} is beyond PostgreSQL's numeric range")


_STRICT = json.JSONDecoder(parse_float=_refuse_beyond_numeric, parse_constant=_refuse_constant)


def _numbers_refused(text: str) -> str | None:
    """Why jsonb would refuse the numbers of this JSON text (NaN, Infinity, or beyond numeric), or None."""
    try:
        _STRICT.decode(text)
    except _Refused as refused:
        return str(refused)
    return None


def _lone_surrogate(text: str) -> str | None:
    """A \\uD800-\\uDFFF escape without its pair, which jsonb refuses; None when every one is paired (the decoder
    joins a pair into one character, so only a lone one is left to fail UTF-8)."""
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape (\\ud800-\\udfff), which PostgreSQL's jsonb refuses"
    return None


def _named(where: str | int) -> str:
    return f"line {where}" if isinstance(where, int) else where


_UNDECODED = re.compile("[\udc80-\udcff]")


def printable(text: str) -> str:
    """Text safe for a PostgreSQL text column: undecodable bytes shown as \\xNN, NUL as \\x00."""
    text = _UNDECODED.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


# Where runs keep files: a folder per run, named by run_folder_name and marked by make_run_folder, under the
# staging root (SLUICE_STAGING_URL) and under the local download root (the CSV before it is parsed). Those
# roots may be shared (a bucket's root, /data): the sweep removes only folders that have both the name shape
# and the marker, and never looks inside anything else.

# the object make_run_folder writes first into a run folder; its text names the folder it was written for
RUN_FOLDER_MARKER = ".sluice-run"
_MARKER_TEXT = "sluice run folder {name}\n"
# run_folder_name's output: up to READABLE_NAME_CHARS safe characters not starting with a dot, a dash, the hash
RUN_FOLDER_NAME = re.compile(rf"(?!\.)[A-Za-z0-9._-]{{1,{READABLE_NAME_CHARS}}}-[0-9a-f]{{16}}")


def run_folder_name(run_id: str) -> str:
    """One safe path segment per run id: the id's safe characters, for people, and a hash of the whole id,
    so that ".", "..", "a:b" and "a_b" never share a folder nor name the root."""
    readable = _UNSAFE_IN_NAME.sub("_", run_id)[:READABLE_NAME_CHARS].lstrip(".") or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}"


def make_run_folder(folder):
    """Create a run's folder with its marker, which makes it the sweep's to remove once its name is a run
    folder's (run_folder_name); returns folder. A local pathlib path or an fsspec one (ObjectStoragePath);
    making it again is harmless."""
    folder.mkdir(parents=True, exist_ok=True)
    if not is_marked(folder):
        with (folder / RUN_FOLDER_MARKER).open("wb") as marker:
            marker.write(_MARKER_TEXT.format(name=folder.name).encode("ascii"))
    return folder


def is_marked(folder) -> bool:
    """Whether folder holds the marker make_run_folder wrote for a folder of its name (a folder copied or
    renamed with its marker is not marked)."""
    expected = _MARKER_TEXT.format(name=folder.name).encode("ascii")
    try:
        with (folder / RUN_FOLDER_MARKER).open("rb") as marker:
            return marker.read(len(expected) + 1) == expected
    except OSError:  # no marker, or one this process cannot read: not a folder it may remove
        return False


def download_root() -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "sluice-downloads"


def download_dir(run_id: str) -> pathlib.Path:
    """The local folder for a run's downloads (make_run_folder creates it); one a killed task leaves behind
    goes with the next sweep."""
    return download_root() / run_folder_name(run_id)


def remove_tree(path) -> None:
    """Remove a folder and everything in it: a local pathlib path, or an fsspec one (ObjectStoragePath)."""
    if isinstance(path, pathlib.Path):
        shutil.rmtree(path)
    else:
        path.rmdir(recursive=True)


def last_change(folder) -> float | None:
    """The newest mtime of the folder and anything in it: a run still writing keeps its folder young.
    None when no entry has a usable time (object stores that report none, or 0): such a folder is kept."""
    times = [_seconds(entry.stat().st_mtime) for entry in (folder, *folder.rglob("*"))]
    known = [moment for moment in times if moment]
    return max(known) if known else None


def _seconds(mtime) -> float | None:
    # fsspec filesystems report a number, a datetime (some object stores) or nothing (0 or None)
    if isinstance(mtime, datetime.datetime):
        return mtime.timestamp()
    return float(mtime) if mtime else None


def sweep(root, *, older_than_seconds: float, now: float, keep: str | None = None) -> list[str]:
    """Remove the run folders under root (a run folder's name and marker, see make_run_folder) unchanged for
    longer than older_than_seconds, except `keep` (a folder name); return the names removed. Anything else
    under root is not Sluice's: it is neither removed nor looked into. A folder that cannot be removed is
    logged and left."""
    if not root.is_dir():
        return []
    removed = []
    for folder in root.iterdir():
        # the name first: it costs nothing, and a foreign folder is not even opened
        if folder.name == keep or not RUN_FOLDER_NAME.fullmatch(folder.name):
            continue
        try:
            if not folder.is_dir() or not is_marked(folder):
                continue
            changed = last_change(folder)
            if changed is None or now - changed <= older_than_seconds:
                continue
            remove_tree(folder)
        except FileNotFoundError:
            continue  # another run's sweep or cleanup removed it first
        except OSError as exc:
            log.warning("staging sweep: could not remove %s: %s", folder, exc)
            continue
        removed.append(folder.name)
    return removed
