"""Read a JSON HTTP API into staging: each page an array, an object wrapping one, or an object holding one at
the source's records_path; pages reached by the source's pagination (sluice.sources.Pagination: a Link
rel="next" header by default, a URL in the body, or a page or offset query parameter).

Each page is parsed as it arrives, a record at a time (sluice.json_stream), never held whole in memory.
"""

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, BinaryIO
from urllib.parse import urljoin

import requests

from sluice import http_client, mapping, progress, type_mix
from sluice.errors import SourceError
from sluice.json_stream import Item, JSONStream
from sluice.redact import redact
from sluice.sources import Pagination
from sluice.staging import StageCounts, StageWriter

log = logging.getLogger(__name__)

SOURCE = "api"
WRAPPER_KEYS = ("data", "items", "results", "records", "rows")
# Records of a wrapped array kept in memory up to this size, then on disk (an unlinked temporary file).
SPOOL_MEMORY = 8 * 1024 * 1024
# paginations that count pages or records themselves: only the records say where such a read ends
COUNTED = ("page_param", "offset_param")


def page_records(stream: JSONStream, *, where: str, records_path: str = "", next_field: str = "",
                 found: dict | None = None) -> Iterator[Item]:
    """The records of a JSON page (a JSONStream with_text), one at a time, each with its own text: the array
    itself, the one array an object wraps, or the array at records_path. The value at the dotted path
    next_field, before or after the records, goes to found["next"]."""
    found = {} if found is None else found
    first = stream.peek()
    if records_path:
        if first != "{":
            document = stream.value()
            stream.end()
            raise SourceError(f"{where}: expected a JSON object holding records_path {records_path!r}, "
                              f"got {mapping.kind(document)}")
        yield from _records_at(stream, _path(records_path), _path(next_field), found, where=where)
        if "records" not in found:
            raise SourceError(f"{where}: no array of records at records_path {records_path!r}")
    elif first == "[":
        yield from stream.items()
    elif first == "{":
        yield from _wrapped_records(stream, _path(next_field), found, where=where)
    else:
        document = stream.value()
        stream.end()
        raise SourceError(f"{where}: expected a JSON array or object, got {type(document).__name__}")
    stream.end()


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split(".")) if dotted else ()


def _records_at(stream: JSONStream, records: tuple[str, ...], next_path: tuple[str, ...], found: dict, *,
                where: str) -> Iterator:
    """At an object: the records of the array at the path `records`, streamed; the value at next_path is parsed
    whole into found["next"]; every other member is parsed to check it, then dropped."""
    for key in stream.members():
        inner = records[1:] if records[:1] == (key,) else None
        inner_next = next_path[1:] if next_path[:1] == (key,) else None
        if inner == ():
            if stream.peek() != "[" or "records" in found:
                value = "repeated" if "records" in found else mapping.kind(stream.value())
                raise SourceError(f"{where}: the value at records_path is {value}, not one array of records")
            found["records"] = True
            yield from stream.items()
        elif inner and stream.peek() == "{":
            yield from _records_at(stream, inner, inner_next or (), found, where=where)
        elif inner_next is not None:
            found["next"] = _value_at(stream.value(), inner_next)
        else:
            stream.value()


def _value_at(value, path: tuple[str, ...]):
    """The value at a dotted path below value (sluice.mapping.lookup's rule); None when there is none."""
    if not path:
        return value
    found = mapping.lookup(value, ".".join(path)) if isinstance(value, Mapping) else None
    return None if mapping.is_missing(found) else found


def _wrapped_records(stream: JSONStream, next_path: tuple[str, ...], found: dict, *, where: str) -> Iterator:
    """The records of the array an object wraps. Which array that is (a wrapper key, or the only one) is
    known only at the object's end, so each array is spooled to a temporary file, a record per line."""
    arrays: dict[str, IO | None] = {}  # like json.loads: a repeated key keeps its first place, its last value
    with contextlib.ExitStack() as spools:
        for key in stream.members():
            if next_path[:1] == (key,) and stream.peek() != "[":
                found["next"] = _value_at(stream.value(), next_path[1:])
                arrays[key] = None
            elif stream.peek() == "[":
                # newline="": no translation of the records' own line ends; surrogatepass: text decoded from
                # bytes that were not UTF-8 is staged as a problem, not lost here
                spool = spools.enter_context(tempfile.SpooledTemporaryFile(
                    SPOOL_MEMORY, mode="w+", encoding="utf-8", newline="", errors="surrogatepass"))
                for item in stream.items():
                    spool.write(f"{len(item.text)}\n{item.text}")  # its length, then its own text
                arrays[key] = spool
            else:
                stream.value()  # not records: parsed whole to check it, then dropped
                arrays[key] = None
        stream.end()
        chosen = _records_array(arrays, where=where)
        chosen.seek(0)
        while length := chosen.readline():
            text = chosen.read(int(length))
            yield Item(stream.parse(text), text)


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
    records_path: str = "",
    pagination: Pagination = Pagination(),
    name: str = SOURCE,
    type_fields: dict | None = None,
    typer=None,
) -> StageCounts:
    """Fetch every page starting at url and stage its records; raises SourceError on any incomplete read.

    Next URLs (links or body fields) stay on url's origin, or go to allowed_hosts (SLUICE_API_ALLOWED_HOSTS)
    without the session's credentials; one anywhere else fails the source before any request is sent there.
    type_fields: the fields (name -> path) whose JSON types the staged records are tallied by (sluice.type_mix), into
    the counts' json_types; None: not tallied. typer (rules.AttributeTyper): the source's declared fields, typed
    into each staged line."""
    writer = StageWriter(out, run_id, name)
    counts = StageCounts(source=name, uri=uri, attributes_key=typer and typer.key)
    tally = type_mix.Tally(type_fields) if type_fields else None
    pager = _Pager(pagination, url, params or {}, http_client.Origins.of(url, allowed_hosts))
    since = f" with {', '.join(f'{key}={value}' for key, value in params.items())}" if params else ""
    log.info("%s", redact(f"{name}: fetching {url}{since}"))
    tracker = progress.Progress(log, name, "fetching", measure=lambda n: f"{progress.count(n)} records")
    request = pager.first()
    while request is not None:
        if counts.pages >= max_pages:
            stopped = requests.Request("GET", request[0], params=request[1]).prepare().url
            raise SourceError(f"{name}: more than SLUICE_MAX_PAGES ({max_pages}) pages; stopped at {stopped}")
        response = http_client.get(session, request[0], source=name, policy=policy, params=request[1],
                                   sleep=sleep, origins=pager.origins)
        counts.pages += 1
        where = f"{name}: {response.url}"
        link = pager.next_link(response, where)  # checked before the page is read: a bad link stages nothing
        found: dict = {}
        before = counts.records + counts.problems
        first = last = None
        body = http_client.iter_body(response, source=name, limit=max_bytes, already=counts.bytes)
        with contextlib.closing(body):
            # the body's one value besides its records: the next URL (next_field), or the total (total_field)
            records = _page(_counted(body, counts), writer, where=where,
                            content_type=response.headers.get("Content-Type", ""), records_path=records_path,
                            next_field=pagination.field or pagination.total_field, found=found)
            for record in records:
                if first is None:
                    first = record
                last = record
                _stage_record(writer, counts, record, field_map["source_id"], tracker, tally, typer)
        tracker.update(counts.records + counts.problems, f"{counts.pages} pages, {progress.size(counts.bytes)}")
        items = counts.records + counts.problems - before
        counted = {}
        if pagination.type in COUNTED:
            counted = {"read": counts.records + counts.problems,
                       "total": _total_count(response, where, pagination.total_field, found.get("next")),
                       "page": (items, _record_key(first, field_map["source_id"]),
                                _record_key(last, field_map["source_id"]))}
        request = pager.after(response.url, where, link=link, body_next=found.get("next"), items=items, **counted)
        counts.whole_read = pager.whole_read
    if tally is not None:
        counts.json_types = tally.counts
    tracker.finish(f"fetched {progress.count(counts.pages)} pages ({progress.size(counts.bytes)}), staged "
                   f"{progress.count(counts.records)} records, quarantined "
                   f"{progress.reasons(counts.problems, writer.first_problems)}")
    return counts


def _stage_record(writer: StageWriter, counts: StageCounts, item: Item, id_field: str, tracker,
                  tally: "type_mix.Tally | None" = None, typer=None) -> None:
    """Stage one record as its own text (the raw table keeps what the source said); a problem keeps that text too.
    tally: the batch's type mix, which counts each record staged; typer: types its declared fields into the line."""
    record, text = item
    record_no = counts.records + counts.problems + 1
    if record_no % progress.CHECK_EVERY == 0:
        tracker.update(record_no, f"{counts.pages} pages, {progress.size(counts.bytes)}")
    if not isinstance(record, Mapping):
        writer.problem(record_no, None, f"record {record_no} is {mapping.kind(record)}, not an object", text)
    else:
        source_id, problem = source_id_of(record, id_field)
        if problem:
            writer.problem(record_no, None, f"record {record_no}: {problem}", text)
        else:
            staged = writer.records
            writer.record_text(record_no, source_id, text, where=f"record {record_no}",
                               attributes=typer and typer.record(record))
            if tally is not None and writer.records > staged:
                tally.add(record)
    writer.tally(counts)


class _Pager:
    """The requests for one source's pages, (url, query params), in the way its pagination says."""

    def __init__(self, pagination: Pagination, url: str, params: dict, origins: http_client.Origins):
        self.pagination, self.url, self.params, self.origins = pagination, url, params, origins
        self.seen: set[str] = set()  # the URLs requested, to refuse a next URL that loops back
        self.position = 1 if pagination.type == "page_param" else 0  # the page number, or the offset
        # counted pagination: the non-empty pages read, each by what identifies its records (see after)
        self.pages_read = 0
        self.pages_seen: dict[tuple, int] = {}
        self.total: int | None = None  # the server's count of the records, from its last page that gave one
        self.whole_read = True  # False when the read ended without every record the server counts

    def first(self) -> tuple[str, dict | None]:
        if self.pagination.type in COUNTED:
            return self.url, self._counted_params()
        self.seen.add(self.url)
        return self.url, self.params or None  # next URLs carry their own query

    def _counted_params(self) -> dict:
        size = {self.pagination.size_param: self.pagination.page_size} if self.pagination.size_param else {}
        return {**self.params, self.pagination.param: self.position, **size}

    def next_link(self, response: requests.Response, where: str) -> str | None:
        """With link pagination, the Link rel="next" URL, checked; the response is closed if it is refused."""
        link = response.links.get("next", {}).get("url") if self.pagination.type == "link" else None
        if not link:
            return None
        next_url = urljoin(response.url, link)
        try:
            self._check(next_url, where, "next link")
        except SourceError:
            http_client.discard(response)
            raise
        return next_url

    def after(self, page_url: str, where: str, *, link: str | None, body_next, items: int, read: int = 0,
              total: int | None = None, page: tuple = ()):
        """The request for the page after this one, or None after the last. A counted pagination (page_param,
        offset_param) ends on an empty page, or on a short one when the server's total count says every
        record was read: servers cap or default their page size below the one asked, so a short page alone
        does not say it is the last. items: the records of this page; read: of every page so far; total: the
        server's count (total_field or X-Total-Count), if it gives one; page: what identifies this page's records (their
        number, the first's and the last's ids), to refuse a server that serves a page again."""
        kind = self.pagination.type
        if kind == "link":
            return (link, None) if link else None
        if kind == "next_field":
            return self._body_next(page_url, where, body_next)
        if total is not None:
            self.total = total
        if items == 0:
            if self.total is not None and read < self.total:
                # records deleted while the read went on, or a server that stops early: the read cannot tell
                # which of the missing ones are gone, so it must not delete
                self.whole_read = False
                log.warning("%s: the read ended at an empty page after %d of the %d records the server counts; "
                            "deletes are skipped", where, read, self.total)
            return None
        number = self.pages_read = self.pages_read + 1
        if page in self.pages_seen:
            raise SourceError(
                f"{where}: page {number} repeats page {self.pages_seen[page]} (the same {items} records): the "
                f"server ignores the {self._parameters()}; stopped, nothing of the read is loaded")
        self.pages_seen[page] = number
        if items < self.pagination.page_size and self.total is not None and read >= self.total:
            return None  # a short page, and the server's count says it was the last
        self.position += 1 if kind == "page_param" else items
        return self.url, self._counted_params()

    def _parameters(self) -> str:
        names = [self.pagination.param] + ([self.pagination.size_param] if self.pagination.size_param else [])
        return " or ".join(f"{name!r} parameter" for name in names)

    def _body_next(self, page_url: str, where: str, value) -> tuple[str, None] | None:
        field = self.pagination.field
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise SourceError(f"{where}: next_field {field!r} is {mapping.kind(value)}, expected a URL or null")
        next_url = urljoin(page_url, value)
        self._check(next_url, where, f"next_field {field!r} points to")
        return next_url, None

    def _check(self, next_url: str, where: str, what: str) -> None:
        if next_url in self.seen:
            raise SourceError(f"{where}: pagination loops back to {next_url}")
        if not self.origins.allows(next_url):
            raise SourceError(f"{where}: {what} {self.origins.refusal(next_url)}")
        self.seen.add(next_url)


def _total_count(response: requests.Response, where: str, total_field: str, in_body) -> int | None:
    """The server's count of every record of the read: the value at total_field in the body (in_body) when the
    pagination names one, else the X-Total-Count header json-server and many APIs send; None when none is
    given (a null or absent total_field)."""
    if total_field:
        if in_body is None:
            return None
        if isinstance(in_body, int) and not isinstance(in_body, bool) and in_body >= 0:
            return in_body
        raise SourceError(f"{where}: total_field {total_field!r} is {repr(in_body)[:50]}, "
                          "expected a count of records")
    value = response.headers.get("X-Total-Count")
    if value is None:
        return None
    try:
        total = int(value.strip())
    except ValueError:
        total = -1
    if total < 0:
        raise SourceError(f"{where}: X-Total-Count {value!r} is not a count of records")
    return total


def _record_key(item: Item | None, id_field: str):
    """What identifies a record for the repeated-page check: its id, or its own text when it has none."""
    if item is None:
        return None
    record = item.value
    if isinstance(record, Mapping):
        source_id, problem = source_id_of(record, id_field)
        if problem is None:
            return source_id
    return item.text


def _page(chunks: Iterable[bytes], writer: StageWriter, *, where: str, content_type: str, **shape) -> Iterator[Item]:
    """The records of one page as its body arrives (page_records, given `shape`), decoded as writer.record_text
    wants them; SourceError if the body is empty or not one JSON document."""
    try:
        stream = JSONStream(chunks, with_text=True, parse_float=writer.parse_float,
                            parse_constant=writer.parse_constant)
        if stream.blank:
            raise SourceError(f"{where}: empty body")
        yield from page_records(stream, where=where, **shape)
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
                 params=since, allowed_hosts=request.settings.api_allowed_hosts, records_path=source.records_path,
                 pagination=source.pagination, name=source.name, typer=source.normalization.typer,
                 type_fields=type_mix.paths(source) if source.anomalies.enabled else None)
