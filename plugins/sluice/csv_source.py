"""Read a CSV published at a URL into staging: download to disk first, then parse it as a stream."""

import csv
import os
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO

import requests

from sluice import http_client
from sluice.errors import SourceError
from sluice.staging import StageCounts, StageWriter, printable

SOURCE = "csv"
# A 200 KB description is a legitimate field; the csv module's default limit is 128 KB.
csv.field_size_limit(64 * 1024 * 1024)


def download(session, url: str, directory: str, *, policy, max_bytes: int, sleep: Callable,
             allowed_hosts=()) -> tuple[str, int]:
    """Stream url into a file under directory (the run's download folder, which the staging sweep covers);
    return (path, bytes). Nothing is parsed before the body is whole. Redirects stay on url's origin,
    or go to allowed_hosts without the session's credentials."""
    response = http_client.get(session, url, source=SOURCE, policy=policy, sleep=sleep,
                               origins=http_client.Origins.of(url, allowed_hosts))
    content_type = response.headers.get("Content-Type", "").lower()
    if "html" in content_type:
        http_client.discard(response)
        raise SourceError(f"{SOURCE}: {response.url} served {content_type}, not CSV")
    handle, path = tempfile.mkstemp(prefix="sluice-csv-", suffix=".csv", dir=directory)
    size = 0
    try:
        with os.fdopen(handle, "wb") as file:
            for chunk in http_client.iter_body(response, source=SOURCE, limit=max_bytes):
                file.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(path)
        raise
    if size == 0:
        os.unlink(path)
        raise SourceError(f"{SOURCE}: {response.url} returned an empty body (not even a header row)")
    return path, size


def read_header(reader, field_map: dict, *, where: str) -> list[str]:
    """The header row, checked against the mapping: every mapped column must be present, once."""
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{where}: no header row") from None
    # undecodable bytes or a NUL in a name must not poison every row, nor the error message
    header = [printable(name.strip()) for name in header]
    duplicates = sorted({name for name in header if name and header.count(name) > 1})
    if duplicates:
        raise SourceError(f"{where}: duplicate column name(s) in the header: {', '.join(duplicates)}")
    missing = [field for field in field_map.values() if field not in header]
    if missing:
        raise SourceError(
            f"{where}: the header lacks column(s) named in csv_mapping: {', '.join(missing)} "
            f"(header: {','.join(header)})"
        )
    return header


def stage_file(path: str, field_map: dict, out: BinaryIO, *, run_id: str, uri: str, where: str) -> StageCounts:
    """Parse a downloaded CSV (BOM, CRLF/LF/CR, quoted commas and newlines) and stage one line per data row."""
    writer = StageWriter(out, run_id, SOURCE)
    counts = StageCounts(source=SOURCE, uri=uri, bytes=os.path.getsize(path))
    # surrogateescape keeps undecodable bytes so the row can be quarantined rather than the file failing.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        reader = csv.reader(file, strict=True)
        header = read_header(reader, field_map, where=where)
        id_index = header.index(field_map["source_id"])
        width = len(header)
        record_no = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                # the reader resumes at the next line; the malformed one is quarantined, not guessed at
                record_no += 1
                writer.problem(record_no, None, f"line {reader.line_num}: malformed CSV ({exc})", "")
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                counts.skipped_blank_lines += 1
                continue
            record_no += 1
            line = f"line {reader.line_num}"
            raw = ",".join(row)
            if len(row) != width:
                writer.problem(record_no, None, f"{line}: expected {width} fields, got {len(row)}", raw)
                continue
            source_id = row[id_index].strip()
            if not source_id:
                writer.problem(record_no, None, f"{line}: blank {field_map['source_id']}", raw)
            elif "\x00" in raw:
                writer.problem(record_no, source_id, f"{line}: contains a NUL byte", raw)
            else:
                # columns without a name (Excel's blank padding) carry nothing a mapping can name
                writer.record(record_no, source_id, {k: v for k, v in zip(header, row) if k}, where=line)
    counts.records, counts.problems = writer.records, writer.problems
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
) -> StageCounts:
    path, _ = download(session, url, workdir, policy=policy, max_bytes=max_bytes, sleep=sleep,
                       allowed_hosts=allowed_hosts)
    try:
        return stage_file(path, field_map, out, run_id=run_id, uri=uri, where=f"{SOURCE}: {url}")
    finally:
        os.unlink(path)
