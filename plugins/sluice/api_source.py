"""Read a JSON HTTP API (an array, or an object wrapping one; Link rel="next" pagination) into staging."""

import json
import time
from collections.abc import Callable, Mapping
from typing import BinaryIO
from urllib.parse import urljoin

import requests

from sluice import http_client, mapping
from sluice.errors import SourceError
from sluice.staging import StageCounts, StageWriter

SOURCE = "api"
WRAPPER_KEYS = ("data", "items", "results", "records", "rows")


def records_of(document, *, where: str) -> list:
    """The list of records in a decoded JSON response: the array itself, or the one array an object wraps."""
    if isinstance(document, list):
        return document
    if isinstance(document, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(document.get(key), list):
                return document[key]
        arrays = [key for key, value in document.items() if isinstance(value, list)]
        if len(arrays) == 1:
            return document[arrays[0]]
        if arrays:
            raise SourceError(f"{where}: the response object holds several arrays ({', '.join(arrays)}); "
                              f"expected one, or one under {'/'.join(WRAPPER_KEYS)}")
        raise SourceError(f"{where}: the response object holds no array of records")
    raise SourceError(f"{where}: expected a JSON array or object, got {type(document).__name__}")


def source_id_of(record: Mapping, field: str) -> tuple[str | None, str | None]:
    """(source_id, problem): ids are strings or integers; anything else is a problem, not a guess."""
    value = mapping.lookup(record, field)
    if mapping.is_missing(value) or value is None:
        return None, f"missing id field {field!r}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"id field {field!r} is {mapping.kind(value)}, expected a string or integer"
    text = str(value).strip()
    if not text:
        return None, f"id field {field!r} is blank"
    return text, None


def fetch(
    session: requests.Session,
    url: str,
    field_map: dict,
    out: BinaryIO,
    *,
    run_id: str,
    uri: str,
    policy: http_client.RetryPolicy,
    max_pages: int,
    max_bytes: int,
    params: dict | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> StageCounts:
    """Fetch every page starting at url and stage its records; raises SourceError on any incomplete read."""
    writer = StageWriter(out, run_id, SOURCE)
    counts = StageCounts(source=SOURCE, uri=uri)
    seen_urls: set[str] = set()
    id_field = field_map["source_id"]
    next_url: str | None = url
    while next_url:
        if counts.pages >= max_pages:
            raise SourceError(f"{SOURCE}: more than SLUICE_MAX_PAGES ({max_pages}) pages; stopped at {next_url}")
        seen_urls.add(next_url)
        response = http_client.get(session, next_url, source=SOURCE, policy=policy, params=params, sleep=sleep)
        params = None  # next links carry their own query
        page_url = response.url
        link = response.links.get("next", {}).get("url")
        content_type = response.headers.get("Content-Type", "")
        body = b"".join(http_client.iter_body(response, source=SOURCE, limit=max_bytes, already=counts.bytes))
        counts.bytes += len(body)
        counts.pages += 1
        where = f"{SOURCE}: {page_url}"
        if not body.strip():
            raise SourceError(f"{where}: empty body")
        try:
            document = json.loads(body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer beyond Python's digit limit
            raise SourceError(f"{where}: invalid JSON (Content-Type {content_type or 'missing'}): {exc}") from exc
        for record in records_of(document, where=where):
            record_no = counts.records + counts.problems + 1
            if not isinstance(record, Mapping):
                writer.problem(record_no, None, f"record {record_no} is {mapping.kind(record)}, not an object",
                               json.dumps(record, ensure_ascii=False))
            else:
                source_id, problem = source_id_of(record, id_field)
                if problem:
                    writer.problem(record_no, None, f"record {record_no}: {problem}",
                                   json.dumps(record, ensure_ascii=False))
                else:
                    writer.record(record_no, source_id, record, where=f"record {record_no}")
            counts.records, counts.problems = writer.records, writer.problems
        next_url = urljoin(page_url, link) if link else None
        if next_url in seen_urls:
            raise SourceError(f"{where}: pagination loops back to {next_url}")
    return counts
