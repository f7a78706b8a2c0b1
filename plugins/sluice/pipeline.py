"""The pipeline, one function per step, without Airflow: plain values in, a result (sluice.results) out.

    init_schema → ingest (once per source) → store_raw → normalize → upsert → checkpoint → record_run

Each step takes a psycopg 3 connection and the Settings of the run (read by the caller: the Airflow edge,
the bench, a test). Every step from ingest to checkpoint handles one source (its lane: the DAG maps them over
the catalog, so one source's failure or retry never touches another's) and takes the results of the lane's
earlier steps; each commits in one transaction holding the source's lock (sluice.warehouse).
Staged files are named by a URI and opened with an Opener: a local path or file:// URI
with open_local, an object store through the caller's own opener.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from typing import BinaryIO, ContextManager

import requests

from sluice import (contracts, delete_guard, progress, quality, queries, runs, scope_key, sources, staging, timing,
                    warehouse)
from sluice.errors import StagedFileMissing
from sluice.migrations import Changes
from sluice.results import Checkpointed, Ingested, Normalized, Recorded, Stored, Upserted
from sluice.settings import Settings
from sluice.sources import FetchRequest, Source
from sluice.staging import StageCounts

log = logging.getLogger(__name__)

# (uri, mode) -> an open binary file: how the steps reach staged files
Opener = Callable[[str, str], ContextManager[BinaryIO]]
# what ingest counted in a file, kept with its load so that a run reading the same file reports the same
FILE_COUNTS = ("records", "problems", "pages", "bytes", "skipped_blank_lines", "ids_ascending", "whole_read",
               "json_types", "attributes_key")


def open_local(uri: str, mode: str) -> ContextManager[BinaryIO]:
    """The Opener of local staging: a path, or a file:// URI."""
    return open(uri.removeprefix("file://"), mode)


def init_schema(conn, *, settings: Settings) -> Changes:
    """Create or upgrade the warehouse's tables and functions, and install the read API's scope key when one is set
    (SLUICE_SCOPE_KEY); what it applied (nothing on a current warehouse)."""
    started = time.monotonic()
    changes = warehouse.apply_schema(conn, lock_timeout_seconds=settings.lock_timeout_seconds)
    if settings.scope_key:  # the read API signs its scopes with it; where it runs elsewhere, it is installed there
        with conn.transaction():
            scope_key.install(conn, settings.scope_key)
    log.info("init_schema: %s (%s)", changes, progress.duration(time.monotonic() - started))
    return changes


def ingest(conn, source: Source, session, url: str, staged_uri: str, open_file: Opener = open_local, *,
           run_id: str, settings: Settings, full_refresh: bool = False, worker: str | None = None,
           interval: tuple[datetime, datetime] | None = None) -> Ingested:
    """Fetch one source and stage its records at staged_uri (created or replaced); never rows in the result.

    The source's kind module reads it (Source.reader); an incremental source (since_param) asks for the
    records from its checkpoint on, a time cursor for those after its newest value loaded less its lookback, a
    window for the run's data interval (interval: [start, end)), unless full_refresh. worker names this machine
    in the result (default: its fully qualified host name), so a store_raw elsewhere that cannot find the file
    says who wrote it."""
    # taken before reading: store_raw never lets a batch replace what a later fetch stored
    fetch_seq = warehouse.next_fetch_seq(conn)
    since = warehouse.read_checkpoint(conn, source.name) if source.since_param and not full_refresh else None
    bounds = {} if full_refresh else time_bounds(conn, source, interval)
    if bounds:
        log.info("%s: reading %s", source.name, ", ".join(f"{key}={value}" for key, value in bounds.items()))
        # on the first request, as a since_param: next links carry their own query
        url = requests.Request("GET", url, params=bounds).prepare().url
    # the fields normalize will load, which the reader types into the staged lines (rules.AttributeTyper)
    source = loaded_fields(conn, source)
    request = FetchRequest(session=session, url=url, run_id=run_id, uri=staged_uri, settings=settings, since=since,
                           workdir=staging.download_dir(run_id), file_key=file_key(source),
                           unchanged=None if full_refresh else _unchanged_file(conn, source, fetch_seq, staged_uri))
    with open_file(staged_uri, "wb") as target:
        out = staging.Blocks(target)
        counts = source.reader().stage(source, request, out)
        out.flush()
    return Ingested.of(counts, fetch_seq, source.kind, staged_by=worker or socket.getfqdn())


def file_key(source: Source) -> str:
    """What a downloaded file's digest is seeded with (FetchRequest.file_key): the source's entry as this run reads
    it (evolved fields included), its rules' input key (which names the rules' version), the staged format and the
    code that reads, stages and judges records, so the same bytes read under another mapping, declaration or
    release of Sluice (a reader that parses or quarantines differently) are another file."""
    return json.dumps({"entry": sources.to_entry(source), "input_key": source.normalization.input_key,
                       "format": staging.COPY_COLUMNS, "code": _code_version()}, sort_keys=True, default=str)


@functools.cache
def _code_version() -> str:
    """A digest of this package's Python and SQL files: any upgrade makes the next read of an unchanged file a read."""
    digest = hashlib.sha256()
    files = sorted(pathlib.Path(__file__).resolve().parent.glob("*.py")) + sorted(queries.SQL_DIR.glob("*.sql"))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _unchanged_file(conn, source: Source, fetch_seq: int, staged_uri: str) -> Callable[[str], StageCounts | None]:
    """FetchRequest.unchanged: the counts of the source's last complete load when it read a file of this digest and
    nothing changed the source since (warehouse.unchanged_file). A hint: store_raw asks again under the source's
    lock, and stages the file after all when the answer changed meanwhile."""
    def unchanged(digest: str) -> StageCounts | None:
        loaded = warehouse.unchanged_file(conn, source.name, digest=digest, fetch_seq=fetch_seq)
        if loaded is None:
            return None
        return StageCounts(**loaded["ingested"], source=source.name, uri=staged_uri, digest=digest, unchanged=True)
    return unchanged


def time_bounds(conn, source: Source, interval: tuple[datetime, datetime] | None) -> dict[str, str]:
    """The query parameters that bound a read by time: its cursor's (the newest value loaded less the lookback;
    none before the first load) and its window's (the run's data interval)."""
    bounds = {}
    if source.cursor is not None:
        last_cursor, _ = warehouse.read_time_bounds(conn, source.name)
        if last_cursor is not None:
            bounds[source.cursor.param] = source.cursor.bound(last_cursor)
    if source.window is not None:
        if interval is None:  # skip_reason skips such a read before it starts
            raise ValueError(f"{source.name}: a window source needs the run's data interval")
        bounds.update(source.window.query(*interval))
    return bounds


def skip_reason(conn, source: Source, *, run_type: str | None, interval: tuple[datetime, datetime] | None,
                full_refresh: bool = False) -> str | None:
    """Why this run does not read the source (sluice.timing.not_due), or None when it does. A window source in
    a run without a data interval (a manual run triggered without a logical date) is skipped, never read whole."""
    if source.window is not None and interval is None and not full_refresh:
        return ("no data interval to read: the run has none (a manual run without a logical date); trigger it "
                "with a logical date, or with full_refresh to read the source whole")
    if source.every_delta is None:
        return None
    _, read_until = warehouse.read_time_bounds(conn, source.name)
    return timing.not_due(source.every_delta, read_until=read_until, interval_end=interval and interval[1],
                          run_type=run_type)


def record_skip(conn, source: Source, *, run_id: str, reason: str) -> None:
    """Record that this run skipped the source and why (GET /sources, and etl_runs through record_run)."""
    warehouse.record_skip(conn, source.name, kind=source.kind, run_id=run_id, reason=reason)


def store_raw(conn, ingested: Ingested, open_file: Opener = open_local, *, run_id: str, settings: Settings,
              worker: str | None = None, source: Source | None = None, cursor_field: str | None = None) -> Stored:
    """Load the source's staged file into its raw table. A batch this run already stored (a cleared or retried
    task) is not read again, so its staged file may be gone; otherwise a file that cannot be opened here fails,
    naming this worker (worker: default its fully qualified host name) and the one that wrote it. source: its
    catalog entry, whose schema contract the batch is checked against first (sluice.contracts; None: unchecked)."""
    if (done := warehouse.stored_already(conn, ingested.source, run_id=run_id,
                                         fetch_seq=ingested.fetch_seq)) is not None:
        return done
    worker = worker or socket.getfqdn()
    if ingested.unchanged:
        if (done := warehouse.store_unchanged(conn, ingested.source, run_id=run_id, fetch_seq=ingested.fetch_seq,
                                              digest=ingested.digest,
                                              lock_timeout_seconds=settings.lock_timeout_seconds)) is not None:
            return done
        return _store_staged_again(conn, ingested, open_file, run_id=run_id, settings=settings, worker=worker,
                                   source=source, cursor_field=cursor_field)
    with open_staged(open_file, ingested, worker) as file:
        return _store(conn, ingested, file, run_id=run_id, settings=settings, source=source, cursor_field=cursor_field)


def _store(conn, ingested: Ingested, file: BinaryIO, *, run_id: str, settings: Settings, source: Source | None,
           cursor_field: str | None) -> Stored:
    digested = ingested.digest and {"digest": ingested.digest,
                                    "ingested": {name: getattr(ingested, name) for name in FILE_COUNTS}}
    return warehouse.store_raw(
        conn, ingested.source, file, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds,
        fetch_seq=ingested.fetch_seq, index_build_memory=settings.index_build_memory, kind=ingested.kind,
        ids_ascending=ingested.ids_ascending, whole_read=ingested.whole_read, contract=source,
        cursor_field=cursor_field, json_types=ingested.json_types, attributes_key=ingested.attributes_key,
        file=digested or None)


def _store_staged_again(conn, ingested: Ingested, open_file: Opener, *, run_id: str, settings: Settings, worker: str,
                        source: Source | None, cursor_field: str | None) -> Stored:
    """store_raw of a file ingest passed on unparsed (Ingested.unchanged) when the source changed since the load it
    repeated: the file is staged here, as ingest would have, and stored as any batch of its fetch."""
    if source is None:
        raise ValueError(f"{ingested.source}: its staged file is the source file itself; staging it needs the "
                         "source's catalog entry (store_raw's source)")
    log.info("%s: the source changed since its last complete load read this file: staging the file now",
             ingested.source)
    read_as = loaded_fields(conn, source)
    folder = staging.make_run_folder(staging.download_dir(run_id))
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        downloaded, lines = os.path.join(scratch, "source"), os.path.join(scratch, "staged.copy")
        with open_staged(open_file, ingested, worker) as given, open(downloaded, "wb") as copy:
            shutil.copyfileobj(given, copy, staging.BLOCK_BYTES)
        with open(lines, "wb") as target:
            out = staging.Blocks(target)
            counts = read_as.reader().stage_again(read_as, downloaded, out, run_id=run_id, uri=ingested.uri)
            out.flush()
        counts.digest = ingested.digest
        batch = dataclasses.replace(ingested, **{name: value for name, value in dataclasses.asdict(counts).items()
                                                 if name not in ("source", "uri")})
        with open(lines, "rb") as file:
            return _store(conn, batch, file, run_id=run_id, settings=settings, source=source,
                          cursor_field=cursor_field)


def store_replay(conn, source: Source, *, run_id: str, settings: Settings) -> Stored:
    """store_raw of a source this run replays from raw (sluice.replay): nothing is read or stored."""
    return warehouse.store_replay(conn, source.name, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds)


def open_staged(open_file: Opener, result: Ingested, worker: str) -> ContextManager[BinaryIO]:
    """Open a source's staged file for reading, or fail naming it and both workers: a local file written on
    another machine is not here (local staging needs one machine), an object store's may be gone."""
    try:
        return open_file(result.uri, "rb")
    except OSError as exc:
        writer = result.staged_by or "an unknown worker"
        if "://" not in result.uri or result.uri.startswith("file://"):
            raise StagedFileMissing(
                f"{result.source}: the staged file {result.uri} is not on this worker ({worker}); {writer} wrote "
                f"it. Local staging (SLUICE_STAGING_URL) needs every task on one machine: stage to an object "
                f"store (s3://...) when tasks run on several workers ({type(exc).__name__}: {exc})") from exc
        raise StagedFileMissing(
            f"{result.source}: the staged object {result.uri} cannot be read on {worker}; {writer} wrote it "
            f"({type(exc).__name__}: {exc})") from exc


def normalize(conn, source: Source, stored: Stored, *, run_id: str, settings: Settings,
              full_refresh: bool = False, replay: bool = False) -> Normalized:
    """Validate and map the source's stored records that changed with the source's rules; under the evolve
    schema contract, its undeclared fields recorded so far are loaded too, as json fields (sluice.contracts).
    replay: every record stored in the source's raw table instead (sluice.replay)."""
    source = loaded_fields(conn, source, report=True)
    return warehouse.normalize(conn, source.name, source.normalization, run_id=run_id, full_refresh=full_refresh,
                               lock_timeout_seconds=settings.lock_timeout_seconds, stored=stored, kind=source.kind,
                               replay=replay)


def loaded_fields(conn, source: Source, *, report: bool = False) -> Source:
    """The source with the fields its records load: under the evolve schema contract, its undeclared fields
    recorded so far too, as json fields (sluice.contracts); report: say which in the log."""
    if source.schema_contract != "evolve":
        return source
    evolved = contracts.evolved_fields(conn, source)
    if report:
        log.info("%s: schema_contract evolve loads %d undeclared fields as json%s", source.name, len(evolved),
                 "".join(f"{', ' if index else ': '}{name} (from {spec.path!r})"
                         for index, (name, spec) in enumerate(evolved.items())))
    return dataclasses.replace(source, fields={**source.fields, **evolved})


def upsert(conn, source: Source, stored: Stored, normalized: Normalized, *, run_id: str, settings: Settings,
           full_refresh: bool = False, accept_deletes: float | None = None, replay: bool = False) -> Upserted:
    """Merge the source's normalized rows into normalized_data, writing only real changes, and soft-delete what
    a whole read no longer contains: DeleteRefused, and nothing of the source commits, beyond the guard (the
    source's max_delete_fraction, else the settings', raised to accept_deletes: what a person accepted for this
    run). A replay (sluice.replay) read no id, so it deletes nothing, and brought no batch from the source for the
    quality gate to judge (its counts would read as a source gone empty in the anomaly history)."""
    guard = delete_guard.limit(source.max_delete_fraction, settings.max_delete_fraction, accept_deletes)
    return warehouse.upsert(
        conn, source.name, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds, stored=stored,
        normalized=normalized, index_build_memory=settings.index_build_memory, kind=source.kind,
        deletes_missing=source.deletes_missing(full_refresh) and not replay, delete_limit=guard,
        gate=None if replay else quality.Gate(source))


def release(conn, source_name: str, run_id: str, *, released_by: str, settings: Settings) -> Upserted:
    """Publish exactly the batch the quality gate held back in run_id, after a person looked at it: its staged rows
    are upserted as that run's upsert would have (checks judged and recorded again, with who released it and when),
    its checkpoint advances, and /sources shows the source loaded. Refused (ReleaseRefused) unless the batch is
    still held: published, released, superseded by a later run's fetch, or never held."""
    from sluice.errors import ReleaseRefused

    if not released_by.strip():
        raise ReleaseRefused("a release names who looked at the batch (--by)")
    with conn.transaction():
        found = conn.execute(queries.query("quality.sql", "held_batch"),
                             {"run_id": run_id, "source": source_name}).fetchone()
    if found is None:
        raise ReleaseRefused(f"{source_name}: run {run_id} has no batch of this source that the quality gate judged")
    status, entry, superseded_by, by, at = found
    if status != "held":
        why = {"superseded": f"run {superseded_by}'s fetch superseded it", "published": "it was published",
               "released": f"{by} released it at {at}",
               "refused": "the delete guard refused it (its check deletes); a run with accept_deletes takes the drop"
               }[status]
        raise ReleaseRefused(f"{source_name}: the batch of run {run_id} is not held: {why}")
    source = sources.from_entry(entry)
    upserted = warehouse.upsert(
        conn, source.name, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds,
        index_build_memory=settings.index_build_memory, kind=source.kind, deletes_missing=source.deletes_missing(False),
        delete_limit=delete_guard.limit(source.max_delete_fraction, settings.max_delete_fraction),
        gate=quality.Gate(source, released_by=released_by))
    warehouse.advance_checkpoint(conn, source.name, run_id=run_id, processed=upserted.processed,
                                 lock_timeout_seconds=settings.lock_timeout_seconds)
    with conn.transaction():
        warehouse.record_source_status(conn, source.name, kind=source.kind, run_id=run_id, failure=None)
    log.info("%s: %s released the held batch of run %s", source.name, released_by, run_id)
    return upserted


def checkpoint(conn, stored: Stored, upserted: Upserted, *, run_id: str, settings: Settings,
               full_refresh: bool = False, read_until: datetime | None = None) -> Checkpointed:
    """Advance the source's checkpoint to the highest id this run stored (stored.last_id) and its time cursor to
    the newest value stored, note that it was read up to read_until (the run's data interval end), and count
    what it processed once however often the step runs."""
    return warehouse.advance_checkpoint(
        conn, upserted.source, run_id=run_id, last_id=stored.last_id, processed=upserted.processed,
        lock_timeout_seconds=settings.lock_timeout_seconds, full_refresh=full_refresh,
        last_cursor=stored.last_cursor, read_until=read_until)


def record_run(conn, outcome: runs.RunOutcome, *, settings: Settings) -> Recorded:
    """Write the run's etl_runs row (runs.RunOutcome.of builds the outcome from the steps' results) and, in the
    same transaction, how each of its sources fared (GET /sources); sweep the work rows of runs abandoned more
    than settings.staging_retention_hours ago (runs.record)."""
    with conn.transaction():
        row_id = runs.record(conn, outcome, retention_hours=settings.staging_retention_hours)
        for name, (kind, failure) in outcome.source_statuses().items():
            warehouse.record_source_status(conn, name, kind=kind, run_id=outcome.run_id, failure=failure)
    return Recorded(etl_run_id=row_id, status=outcome.status, sources=outcome.source_counts())


def quality_warnings(conn, run_id: str) -> list[tuple]:
    """The run's failed warn checks: (source, check, measured, threshold, detail), for its alerts."""
    with conn.transaction():
        return conn.execute(queries.query("quality.sql", "run_warnings"), {"run_id": run_id}).fetchall()


def stale_sources(conn, sources: list[str], *, limit_hours: float) -> list[tuple[str, datetime]]:
    """(source, last successful load) of the given sources whose last success is older than limit_hours."""
    return conn.execute(queries.query("pipeline.sql", "stale_sources"),
                        {"sources": sources, "limit_seconds": limit_hours * 3600}).fetchall()
