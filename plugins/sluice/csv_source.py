"""Read a CSV published at a URL into staging: download to disk first (a gzip file decompressed on the way),
then parse it as a stream, with the source's delimiter and encoding."""

import codecs
import contextlib
import csv
import hashlib
import itertools
import logging
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring as encode_json_string
from typing import BinaryIO
from urllib.parse import urlsplit

import requests

from sluice import http_client, progress, staging
from sluice.errors import HeaderMismatch, InvalidSource, SourceError
from sluice.redact import redact
from sluice.staging import StageCounts, StageWriter, printable

log = logging.getLogger(__name__)

SOURCE = "csv"
# Every record this kind stages has the same fields, the header's, each a string: its first record shows a batch's
# fields and their types (sluice.contracts)
UNIFORM_RECORDS = True
# A 200 KB description is a legitimate field; the csv module's default limit is 128 KB.
csv.field_size_limit(64 * 1024 * 1024)
GZIP_TYPES = ("application/gzip", "application/x-gzip")
GZIP_WBITS = 31  # zlib's window bits for the gzip format, header and trailer checked
# Lines are parsed by csv a block of about this many characters at a time (see _records): a Python call per
# line would cost a second a million lines
BLOCK_CHARS = 1024 * 1024
# what a header without the mapped columns usually means, and where to fix it
# records whose declared fields are typed together, a column at a time (rules.AttributeTyper.rows_reader)
TYPED_BLOCK = 1000
HEADER_FIX = ("Map the source's columns by the names in its header (catalog field mapping, or csv_mapping), or set "
              "its delimiter and encoding if the header was split wrongly")


def download(session, url: str, directory: str, *, policy, max_bytes: int, sleep: Callable,
             allowed_hosts=(), name: str = SOURCE, digest=None) -> tuple[str, int]:
    """Stream url into a file under directory (the run's download folder, which the staging sweep covers);
    return (path, bytes). Nothing is parsed before the body is whole. Redirects stay on url's origin,
    or go to allowed_hosts without the session's credentials. digest: a hashlib object fed the file's bytes
    (decompressed) as they are written, so the file is hashed without a second read."""
    response = http_client.get(session, url, source=name, policy=policy, sleep=sleep,
                               origins=http_client.Origins.of(url, allowed_hosts))
    content_type = response.headers.get("Content-Type", "").lower()
    if "html" in content_type:
        http_client.discard(response)
        raise SourceError(f"{name}: {response.url} served {content_type}, not CSV")
    gzipped = is_gzip(url, response)
    total = None if gzipped else http_client.expected_bytes(response)
    log.info("%s: downloading %s%s%s", name, redact(response.url), " (gzip, decompressed as it arrives)"
             if gzipped else "", f" ({progress.size(total)})" if total else "")
    tracker = progress.Progress(log, name, "downloading", total=total, measure=progress.size)
    handle, path = tempfile.mkstemp(prefix="sluice-csv-", suffix=".csv", dir=directory)
    size = 0
    body = http_client.iter_body(response, source=name, limit=max_bytes)
    try:
        with os.fdopen(handle, "wb") as file, contextlib.closing(body):
            chunks = gunzip(body, where=f"{name}: {response.url}", limit=max_bytes) if gzipped else body
            for chunk in chunks:
                file.write(chunk)
                if digest is not None:
                    digest.update(chunk)
                size += len(chunk)
                tracker.update(size)
    except BaseException:
        os.unlink(path)
        raise
    if size == 0:
        os.unlink(path)
        raise SourceError(f"{name}: {response.url} returned an empty body (not even a header row)")
    tracker.finish(f"downloaded {progress.size(size)}")
    return path, size


def is_gzip(url: str, response) -> bool:
    """Whether the file itself is gzip: a gzip Content-Type, or a path ending .gz (the URL asked for, or the one
    redirected to) unless a Content-Encoding: gzip says the compression was the transfer's (requests decoded it)."""
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in GZIP_TYPES:
        return True
    transfer = response.headers.get("Content-Encoding", "").strip().lower() in ("gzip", "x-gzip")
    return not transfer and any(urlsplit(u).path.lower().endswith(".gz") for u in (url, response.url))


def gunzip(chunks: Iterable[bytes], *, where: str, limit: int) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (members one after another, as `cat a.gz b.gz` makes), at most
    CHUNK_BYTES at a time; SourceError when it is not gzip, ends early, or passes `limit` bytes decompressed."""
    decompressor, fed, total = zlib.decompressobj(GZIP_WBITS), False, 0
    for chunk in chunks:
        while chunk or fed:
            fed = fed or bool(chunk)
            try:
                data = decompressor.decompress(chunk, http_client.CHUNK_BYTES)
            except zlib.error as exc:
                raise SourceError(f"{where}: not a valid gzip file ({exc})") from None
            total += len(data)
            if total > limit:
                raise SourceError(f"{where}: decompressed, it exceeds SLUICE_MAX_BYTES ({limit} bytes)")
            yield data
            if decompressor.eof:  # a member ended: what follows is the next one
                chunk, decompressor, fed = decompressor.unused_data, zlib.decompressobj(GZIP_WBITS), False
            elif not decompressor.unconsumed_tail and len(data) < http_client.CHUNK_BYTES:
                break  # everything given so far is decompressed
            else:
                chunk = decompressor.unconsumed_tail
    if fed:
        raise SourceError(f"{where}: the gzip file is truncated (it ends in the middle of its data)")


def read_header(reader, field_map: dict, *, where: str) -> list[str]:
    """The header row, checked against the mapping: every mapped column must be present, once."""
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{where}: no header row") from None
    except csv.Error as exc:
        raise SourceError(f"{where}: the header row is malformed CSV ({exc})") from None
    # undecodable bytes or a NUL in a name must not poison every row, nor the error message
    header = [printable(name.strip()) for name in header]
    duplicates = sorted({name for name in header if name and header.count(name) > 1})
    if duplicates:
        raise SourceError(f"{where}: duplicate column name(s) in the header: {', '.join(duplicates)}")
    missing = [field for field in field_map.values() if field not in header]
    if missing:
        raise HeaderMismatch(
            f"{where}: the header lacks column(s) named in csv_mapping: {', '.join(missing)} "
            f"(header: {','.join(header)}): no record of the file can be loaded. {HEADER_FIX}"
        )
    return header


class _PhysicalLines:
    """The file's physical lines, terminators kept, as csv.reader's input. It remembers the lines of the record
    being read, so that a record that fails to parse can give back all but its first line, and it withholds a
    second line from a record known to fail (see _Span): the reader then meets the end of its input at once."""

    def __init__(self, file, delimiter: str):
        self._file = file
        self.delimiter = delimiter  # the csv dialect's, for every reader of these lines
        self._given_back: list[str] = []  # the next line to read is the last
        self.record: list[str] = []  # the physical lines of the record being read
        self.number = 0  # the physical line number of the last line read
        self.span: _Span | None = None
        self.withheld = False  # the current record asked for a line past its first within self.span
        self.at_end = False  # the file ran out during the current record

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.record and self.span is not None and self.first() < self.span.end:
            self.withheld = True
            raise StopIteration
        if self._given_back:
            line = self._given_back.pop()
        else:
            try:
                line = next(self._file)
            except StopIteration:
                self.at_end = True
                raise
        self.number += 1
        self.record.append(line)
        return line

    def start_record(self) -> None:
        self.record = []
        self.withheld = self.at_end = False

    def first(self) -> int:
        """The line number of the current record's first line."""
        return self.number - len(self.record) + 1

    def block(self, chars: int) -> list[str]:
        """The next lines to read, in order, as a list: those given back, else about `chars` of the file."""
        if self._given_back:
            block = self._given_back[::-1]
            self._given_back.clear()
            return block
        return self._file.readlines(chars)

    def give_back(self, lines: list[str]) -> None:
        self._given_back.extend(reversed(lines))
        self.number -= len(lines)


@dataclass
class _Span:
    """A record that began on line `start`, read on to line `end` and failed there (`end` is inf when it met the
    end of the file inside quotes). A later record that begins before `end` and reads past its first line fails
    the same way, so it is rejected without reading on: a file full of stray quotes is parsed in linear time.

    Why this is exact: the failed record was inside quotes at the start of each line start+1..end, and each of
    those lines but `end`, read from inside quotes, ended inside quotes without an error. A record beginning on a
    line j in between that does not end on line j is inside quotes at the start of line j+1 too, so it reads
    j+1..end exactly as the failed one did and meets the same end: the same csv error, the end of the file inside
    quotes, or the record ending on line `end`. Only in that last case can its field count differ (it has line
    j's fields instead of those of start..j); `tails` gives it without reading on.
    One approximation: a field over csv's 64 MB limit that was open at the start of line j+1 may have opened
    elsewhere in line j for a record from line j, so it could be up to a line shorter and just under the limit.
    """

    start: int
    end: float
    failure: str | None = None  # what the record met on line `end`; None: it ended there with the wrong count
    tails: list[int] | None = None  # tails[j - start]: how many fields lines j+1..end add to a record from line j

    def reason(self, line_no: int, first_line: str, width: int, delimiter: str) -> str | None:
        """Why a record from line_no (in the span, read past its first line) fails; None: it has `width` fields."""
        if self.failure is not None:
            return f"line {line_no}: malformed CSV: a quote opened on this line {self.failure}"
        # a lenient reader returns the field left open at the end of the line as well
        fields = len(next(csv.reader([first_line], delimiter=delimiter))) - 1 + self.tails[line_no - self.start]
        return None if fields == width else _count_reason(line_no, width, fields, self.end)


def _count_reason(line_no: int, width: int, fields: int, end: float) -> str:
    return f"line {line_no}: expected {width} fields, got {fields} (a quote opened on this line runs to line {end})"


def _fields_added(lines: list[str], delimiter: str) -> list[int]:
    """Per line of a failed record but its first: the fields that line adds, read from inside quotes."""
    # a leading quote puts a lenient reader inside a quoted field; it returns the field left open as well
    added = [len(next(csv.reader(['"' + line], delimiter=delimiter))) - 1 for line in lines]
    added[-1] += 1  # the last line ends the record: its last field is not left open
    return added


def _rejection(lines: _PhysicalLines, width: int, error: str | None, row: list[str] | None) -> str | None:
    """Why the record just read is rejected, said of its first line, remembering its span; None: read it again,
    it has the right field count after all (it was withheld within a span, see _Span)."""
    start, end = lines.first(), lines.number
    if lines.withheld:
        reason = lines.span.reason(start, lines.record[0], width, lines.delimiter)
        if reason is None:
            lines.span = None
        return reason
    if error is not None and lines.at_end:
        lines.span = _Span(start, math.inf, "is still open at the end of the file")
        return lines.span.reason(start, lines.record[0], width, lines.delimiter)
    if error is not None and len(lines.record) == 1:
        return f"line {start}: malformed CSV ({error})"
    if error is not None:
        lines.span = _Span(start, end, f"runs into line {end}: {error}")
        return lines.span.reason(start, lines.record[0], width, lines.delimiter)
    tails = list(itertools.accumulate(reversed(_fields_added(lines.record[1:], lines.delimiter))))[::-1]
    lines.span = _Span(start, end, tails=tails)
    return _count_reason(start, width, len(row), end)


def _records(lines: _PhysicalLines, width: int) -> Iterator[tuple[int, list[str] | None, tuple[str, str] | None]]:
    """(line number, fields, None) per record, or (line number, None, (reason, text)) for a line rejected alone.

    A record that fails to parse (a csv error, the end of the file inside quotes, or the wrong field count after
    reading several lines) costs only its first physical line, kept as text; parsing resumes on the next line.
    Records are read a block of lines at a time by csv itself (_block_records) up to the first one that fails
    or that runs past the block; that record, and every record that begins within a failed record's span,
    is read line by line (_careful_record)."""
    while True:
        if lines.span is None or lines.number + 1 >= lines.span.end:
            block = lines.block(BLOCK_CHARS)
            if not block:
                return
            if (yield from _block_records(lines, block, width)):
                continue
        outcome = _careful_record(lines, width)
        if outcome is _END:
            return
        if outcome is not None:
            yield outcome


def _block_records(lines: _PhysicalLines, block: list[str], width: int):
    """The records of a block of lines, as csv reads them, up to the first one the line-by-line reading could
    judge otherwise: a csv error (which may only be the block's end), or the wrong field count after several
    lines. Its lines and those after it are given back; returns whether the whole block was read."""
    reader = csv.reader(block, strict=True, delimiter=lines.delimiter)
    base, done = lines.number, 0
    try:
        for row in reader:
            end = reader.line_num
            if end - done > 1 and len(row) != width:
                break
            done = end
            yield base + end, row, None
    except csv.Error:
        # not an error to raise: the record that met it (perhaps only the block's end) is given back below,
        # and the line-by-line reading rejects it with its reason, or reads it whole past the block
        pass
    lines.number = base + len(block)
    if done < len(block):
        lines.give_back(block[done:])
        return False
    return True


_END = object()


def _careful_record(lines: _PhysicalLines, width: int):
    """One record read line by line (see _PhysicalLines): (line number, fields, None), (line number, None,
    (reason, text)) for a first line rejected alone, None when its lines were given back to be read again
    (it has the right field count after all, see _rejection), or _END at the end of the file."""
    lines.start_record()
    try:
        row = next(csv.reader(lines, strict=True, delimiter=lines.delimiter))
    except StopIteration:
        return _END
    except csv.Error as exc:
        reason = _rejection(lines, width, str(exc), None)
    else:
        if len(lines.record) == 1 or len(row) == width:
            return lines.number, row, None
        reason = _rejection(lines, width, None, row)
    start, (first, *rest) = lines.first(), lines.record
    if reason is None:
        lines.give_back(lines.record)
        return None
    lines.give_back(rest)
    return start, None, (reason, first.rstrip("\r\n"))


def json_keys(header: list[str]) -> list[str] | None:
    """The header's names encoded as JSON object keys, for json_object; None when a column has no name or a name
    is there twice (the record is then a dict first: unnamed columns left out, the last of a name kept)."""
    if all(header) and len(set(header)) == len(header):
        return [encode_json_string(name) + ":" for name in header]
    return None


def json_object(keys: list[str], row: list[str]) -> str:
    """A row as a JSON object, the very text StageWriter.record gives its dict (its encoder's string function,
    the same separators), joined in C in a third of the time."""
    return "{" + ",".join(map(str.__add__, keys, map(encode_json_string, row))) + "}"


def stage_file(path: str, field_map: dict, out: BinaryIO, *, run_id: str, uri: str, where: str,
               delimiter: str = ",", encoding: str = "utf-8", name: str = SOURCE, typer=None) -> StageCounts:
    """Parse a downloaded CSV (BOM, CRLF/LF/CR, quoted delimiters and newlines) and stage one line per data row;
    typer (rules.AttributeTyper): the source's declared fields, typed into each staged line."""
    # a UTF-8 file may start with a byte order mark, which is not part of the first column's name
    codec = codecs.lookup(encoding).name
    text_encoding = "utf-8-sig" if codec == "utf-8" else codec
    writer = StageWriter(out, run_id, name, encoding=codec.upper())
    counts = StageCounts(source=name, uri=uri, bytes=os.path.getsize(path))
    tracker = progress.Progress(log, name, "staging", total=counts.bytes, measure=progress.size)
    # surrogateescape keeps undecodable bytes so the row can be quarantined rather than the file failing.
    with open(path, encoding=text_encoding, errors="surrogateescape", newline="") as file:
        lines = _PhysicalLines(file, delimiter)
        header = read_header(csv.reader(lines, strict=True, delimiter=lines.delimiter), field_map, where=where)
        id_index = header.index(field_map["source_id"])
        width = len(header)
        keys = json_keys(header)
        typed = typer.rows_reader(header) if typer is not None else None
        # the records waiting for their attributes, typed a block at a time (rules.AttributeTyper.rows_reader)
        pending: list[tuple[int, str, list[str], int]] = []

        def stage_record(record_no: int, source_id: str, row: list[str], line_no: int, attributes: str | None) -> None:
            if keys is not None:
                writer.record_json(record_no, source_id, json_object(keys, row), line_no=line_no, attributes=attributes)
            else:
                # columns without a name (Excel's blank padding) carry nothing a mapping can name
                writer.record(record_no, source_id, {k: v for k, v in zip(header, row) if k}, where=f"line {line_no}",
                              attributes=attributes)

        def stage_pending() -> None:
            if pending:
                for record, attributes in zip(pending, typed([row for _, _, row, _ in pending])):
                    stage_record(*record, attributes)
                pending.clear()

        def problem(*args) -> None:
            stage_pending()  # the staged lines keep the file's order
            writer.problem(*args)

        record_no = 0
        for line_no, row, rejected in _records(lines, width):
            if record_no % progress.CHECK_EVERY == 0:
                # the bytes the parser has taken from the file (read ahead by at most a buffer)
                tracker.update(file.buffer.tell(), f"{progress.count(writer.records)} records staged, "
                                                   f"{progress.count(writer.problems)} quarantined")
            if rejected is not None:
                # a line that does not parse is quarantined with its own text, not guessed at
                record_no += 1
                problem(record_no, None, *rejected)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                counts.skipped_blank_lines += 1
                continue
            record_no += 1
            raw = delimiter.join(row)
            if len(row) != width:
                problem(record_no, None, f"line {line_no}: expected {width} fields, got {len(row)}", raw)
                continue
            source_id = row[id_index].strip()
            if not source_id:
                problem(record_no, None, f"line {line_no}: blank {field_map['source_id']}", raw)
            elif "\x00" in raw:
                problem(record_no, source_id, f"line {line_no}: contains a NUL byte", raw)
            elif typed is None:
                stage_record(record_no, source_id, row, line_no, None)
            else:
                pending.append((record_no, source_id, row, line_no))
                if len(pending) == TYPED_BLOCK:
                    stage_pending()
        stage_pending()
    writer.tally(counts)
    counts.attributes_key = typer and typer.key
    blank = f", skipped {progress.count(counts.skipped_blank_lines)} blank lines" if counts.skipped_blank_lines else ""
    tracker.finish(f"staged {progress.count(counts.records)} records, quarantined "
                   f"{progress.reasons(counts.problems, writer.first_problems)}{blank}")
    return counts


def fetch(
    session: requests.Session,
    url: str,
    field_map: dict,
    out: BinaryIO,
    *,
    run_id: str,
    uri: str,
    policy: http_client.RetryPolicy,
    max_bytes: int,
    workdir: str,
    sleep: Callable[[float], None] = time.sleep,
    allowed_hosts=(),
    delimiter: str = ",",
    encoding: str = "utf-8",
    name: str = SOURCE,
    typer=None,
    file_key: str = "",
    unchanged: Callable[[str], StageCounts | None] | None = None,
) -> StageCounts:
    """Download and stage a CSV. file_key and unchanged: FetchRequest's; when unchanged knows the file's digest,
    the downloaded file itself is staged (no record parsed) and the counts are its."""
    digest = hashlib.sha256(file_key.encode())
    path, _ = download(session, url, workdir, policy=policy, max_bytes=max_bytes, sleep=sleep,
                       allowed_hosts=allowed_hosts, name=name, digest=digest)
    try:
        known = unchanged(digest.hexdigest()) if unchanged is not None else None
        if known is not None:
            with open(path, "rb") as file:
                shutil.copyfileobj(file, out, staging.BLOCK_BYTES)
            log.info("%s: the file is the one the source's last complete load read (%d records): not parsed",
                     name, known.records + known.problems)
            return known
        counts = stage_file(path, field_map, out, run_id=run_id, uri=uri, where=f"{name}: {url}",
                            delimiter=delimiter, encoding=encoding, name=name, typer=typer)
        counts.digest = digest.hexdigest()
        return counts
    finally:
        os.unlink(path)


def stage(source, request, out: BinaryIO) -> StageCounts:
    """The csv kind's entry point (sluice.sources.KINDS): the file downloaded into the run's local folder, then
    parsed. A CSV is read whole."""
    if request.since is not None:
        raise InvalidSource(f"{source.name}: a csv source is read whole; since_param {source.since_param!r} "
                            "cannot ask it for records from the checkpoint on. Remove since_param from its entry")
    staging.make_run_folder(request.workdir)  # marked: the staging sweep removes it if a kill leaves it
    return fetch(request.session, request.url, source.mapping, out, run_id=request.run_id, uri=request.uri,
                 policy=request.policy, max_bytes=request.settings.max_bytes, workdir=str(request.workdir),
                 allowed_hosts=request.settings.api_allowed_hosts, delimiter=source.delimiter,
                 encoding=source.encoding, name=source.name, typer=source.normalization.typer,
                 file_key=request.file_key, unchanged=request.unchanged)


def stage_again(source, path: str, out: BinaryIO, *, run_id: str, uri: str) -> StageCounts:
    """Stage a downloaded file that ingest passed on unparsed (StageCounts.unchanged) after all: store_raw found
    the source changed since the load it repeated. source: as ingest read it (pipeline.loaded_fields)."""
    return stage_file(path, source.mapping, out, run_id=run_id, uri=uri, where=f"{source.name}: {source.endpoint}",
                      delimiter=source.delimiter, encoding=source.encoding, name=source.name,
                      typer=source.normalization.typer)
