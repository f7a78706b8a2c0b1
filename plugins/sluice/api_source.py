"""Read a JSON HTTP API (an array, or an object wrapping one; Link rel="next" pagination) into staging.

Each page is parsed as it arrives, a record at a time (sluice.json_stream), never held whole in memory.
"""

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, BinaryIO
from urllib.parse import urljoin

import requests

from sluice import http_client, mapping, progress
from sluice.errors import SourceError
from sluice.json_stream import JSONStream
from sluice.redact import redact
from sluice.staging import StageCounts, StageWriter

log = logging.getLogger(__name__)

SOURCE = "api"
WRAPPER_KEYS = ("data", "items", "results", "records", "rows")
# Records of a wrapped array kept in memory up to this size, then on disk (an unlinked temporary file).
SPOOL_MEMORY = 8 * 1024 * 1024


def page_records(stream: JSONStream, *, where: str) -> Iterator:
    """The records of a JSON page, one at a time: the array itself, or the one array an object wraps."""
    first = stream.peek()
    if first == "[":
        yield from stream.items()
    elif first == "{":
        yield from _wrapped_records(stream, where=where)
    else:
        document = stream.value()
        stream.end()
        raise SourceError(f"{where}: expected a JSON array or object, got {type(document).__name__}")
    stream.end()


def _wrapped_records(stream: JSONStream, *, where: str) -> Iterator:
    """The records of the array an object wraps. Which array that is (a wrapper key, or the only one) is
    known only at the object's end, so each array is spooled to a temporary file, a record per line."""
    arrays: dict[str, IO | None] = {}  # like json.loads: a repeated key keeps its first place, its last value
    with contextlib.ExitStack() as spools:
        for key in stream.members():
            if stream.peek() == "[":
                spool = spools.enter_context(tempfile.SpooledTemporaryFile(SPOOL_MEMORY, mode="w+", encoding="utf-8"))
                for record in stream.items():
                    # json.dumps then json.loads gives back the same values: floats by repr, NaN,
                    # lone surrogates escaped
                    spool.write(json.dumps(record) + "\n")
                arrays[key] = spool
            else:
                stream.value()  # not records: parsed whole to check it, then dropped
                arrays[key] = None
        stream.end()
        chosen = _records_array(arrays, where=where)
        chosen.seek(0)
        for line in chosen:
            yield json.loads(line)


def _records_array(arrays: dict[str, IO | None], *, where: str) -> IO:
    for key in WRAPPER_KEYS:
        if arrays.get(key) is not None:
            return arrays[key]
    names = [key for key, spool in arrays.items() if spool is not None]
    if len(names) == 1:
        return arrays[names[0]]
    if names:
        raise SourceError(f"{where}: the response object holds several arrays ({', '.join(names)}); "
                          f"expected one, or one under {'/'.join(WRAPPER_KEYS)}")
    raise SourceError(f"{where}: the response object holds no array of records")


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
    allowed_hosts: Iterable[tuple[str, int | None]] = (),
    name: str = SOURCE,
) -> StageCounts:
    """Fetch every page starting at url and stage its records as source `name` (the seed `api` unless told);
    raises SourceError on any incomplete read.

    Next links stay on url's origin, or go to allowed_hosts (SLUICE_API_ALLOWED_HOSTS) without the session's
    credentials; a link anywhere else fails the source before any request is sent there."""
    writer = StageWriter(out, run_id, name)
    counts = StageCounts(source=name, uri=uri)
    origins = http_client.Origins.of(url, allowed_hosts)
    seen_urls: set[str] = set()
    id_field = field_map["source_id"]
    next_url: str | None = url
    since = f" with {', '.join(f'{name}={value}' for name, value in params.items())}" if params else ""
    log.info("%s", redact(f"{name}: fetching {url}{since}"))
    tracker = progress.Progress(log, name, "fetching", measure=lambda n: f"{progress.count(n)} records")
    while next_url:
        if counts.pages >= max_pages:
            raise SourceError(f"{name}: more than SLUICE_MAX_PAGES ({max_pages}) pages; stopped at {next_url}")
        seen_urls.add(next_url)
        response = http_client.get(session, next_url, source=name, policy=policy, params=params, sleep=sleep,
                                   origins=origins)
        params = None  # next links carry their own query
        page_url = response.url
        link = response.links.get("next", {}).get("url")
        content_type = response.headers.get("Content-Type", "")
        counts.pages += 1
        where = f"{name}: {page_url}"
        next_url = urljoin(page_url, link) if link else None
        # checked before the page is read: a page that links out of bounds stages nothing
        if next_url in seen_urls or (next_url and not origins.allows(next_url)):
            http_client.discard(response)
            if next_url in seen_urls:
                raise SourceError(f"{where}: pagination loops back to {next_url}")
            raise SourceError(f"{where}: next link {origins.refusal(next_url)}")
        body = http_client.iter_body(response, source=name, limit=max_bytes, already=counts.bytes)
        with contextlib.closing(body):
            for record in _page(_counted(body, counts), where=where, content_type=content_type):
                record_no = counts.records + counts.problems + 1
                if record_no % progress.CHECK_EVERY == 0:
                    tracker.update(record_no, f"{counts.pages} pages, {progress.size(counts.bytes)}")
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
        tracker.update(counts.records + counts.problems, f"{counts.pages} pages, {progress.size(counts.bytes)}")
    tracker.finish(f"fetched {progress.count(counts.pages)} pages ({progress.size(counts.bytes)}), staged "
                   f"{progress.count(counts.records)} records, quarantined "
                   f"{progress.reasons(counts.problems, writer.first_problems)}")
    return counts


def _page(chunks: Iterable[bytes], *, where: str, content_type: str) -> Iterator:
    """The records of one page as its body arrives; SourceError if the body is empty or not one JSON document."""
    try:
        stream = JSONStream(chunks)
        if stream.blank:
            raise SourceError(f"{where}: empty body")
        yield from page_records(stream, where=where)
    except ValueError as exc:  # not JSON, not UTF-8/16/32, an integer beyond Python's digit limit
        raise SourceError(f"{where}: invalid JSON (Content-Type {content_type or 'missing'}): {exc}") from exc


def _counted(chunks: Iterable[bytes], counts: StageCounts) -> Iterator[bytes]:
    for chunk in chunks:
        counts.bytes += len(chunk)
        yield chunk


def stage(source, request, out: BinaryIO) -> StageCounts:
    """The api kind's entry point (sluice.sources.KINDS): every page of the source, from its checkpoint when
    request.since is set."""
    since = {source.since_param: request.since} if request.since is not None else None
    return fetch(request.session, request.url, source.mapping, out, run_id=request.run_id, uri=request.uri,
                 policy=request.policy, max_pages=request.settings.max_pages, max_bytes=request.settings.max_bytes,
                 params=since, allowed_hosts=request.settings.api_allowed_hosts, name=source.name)
