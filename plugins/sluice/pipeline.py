"""The pipeline, one function per step, without Airflow: plain values in, a result (sluice.results) out.

    init_schema → ingest (once per source) → store_raw → normalize → upsert → checkpoint → record_run

Each step takes a psycopg 3 connection and the Settings of the run (read by the caller: the Airflow edge,
the bench, a test); ingest also takes the Source value, an HTTP session and URL, and where to stage. The
steps after ingest take the previous step's results for all sources of the run, one transaction per source
(sluice.warehouse). Staged files are named by a URI and opened with an Opener: a local path or file:// URI
with open_local, an object store through the caller's own opener.
"""

import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO, ContextManager

from sluice import progress, runs, staging, warehouse
from sluice.errors import DeleteRefused, StagedFileMissing
from sluice.migrations import Changes
from sluice.results import (Checkpointed, Ingested, Normalized, Recorded, SourceCheckpoint, SourceNormalized,
                            SourceStored, SourceUpserted, Stored, Upserted)
from sluice.settings import Settings
from sluice.sources import FetchRequest, Source

log = logging.getLogger(__name__)

# (uri, mode) -> an open binary file: how the steps reach staged files
Opener = Callable[[str, str], ContextManager[BinaryIO]]


def open_local(uri: str, mode: str) -> ContextManager[BinaryIO]:
    """The Opener of local staging: a path, or a file:// URI."""
    return open(uri.removeprefix("file://"), mode)


def init_schema(conn, *, settings: Settings) -> Changes:
    """Create or upgrade the warehouse's tables and functions; what it applied (nothing on a current warehouse)."""
    started = time.monotonic()
    changes = warehouse.apply_schema(conn, lock_timeout_seconds=settings.lock_timeout_seconds)
    log.info("init_schema: %s (%s)", changes, progress.duration(time.monotonic() - started))
    return changes


def ingest(conn, source: Source, session, url: str, staged_uri: str, open_file: Opener = open_local, *,
           run_id: str, settings: Settings, full_refresh: bool = False, worker: str | None = None) -> Ingested:
    """Fetch one source and stage its records at staged_uri (created or replaced); never rows in the result.

    The source's kind module reads it (Source.reader); an incremental source (since_param) asks for the
    records from its checkpoint on, unless full_refresh. worker names this machine in the result (default:
    its fully qualified host name), so a store_raw elsewhere that cannot find the file says who wrote it."""
    # taken before reading: store_raw never lets a batch replace what a later fetch stored
    fetch_seq = warehouse.next_fetch_seq(conn)
    since = warehouse.read_checkpoint(conn, source.name) if source.since_param and not full_refresh else None
    request = FetchRequest(session=session, url=url, run_id=run_id, uri=staged_uri, settings=settings, since=since,
                           workdir=staging.download_dir(run_id))
    with open_file(staged_uri, "wb") as target:
        out = staging.Blocks(target)
        counts = source.reader().stage(source, request, out)
        out.flush()
    return Ingested.of(counts, fetch_seq, source.kind, staged_by=worker or socket.getfqdn())


def store_raw(conn, ingested: Iterable[Ingested], open_file: Opener = open_local, *, run_id: str,
              settings: Settings, worker: str | None = None) -> Stored:
    """Load every ingested source's staged file into its raw table (the sources that failed to ingest are not
    given); fails when there is none, or when a staged file cannot be opened here (worker: this machine's
    name for that error, default its fully qualified host name)."""
    ingested = list(ingested)
    if not ingested:
        raise RuntimeError("no source was ingested; nothing to store (see the ingest tasks' errors)")
    stored = {}
    for result in ingested:
        with open_staged(open_file, result, worker or socket.getfqdn()) as file:
            stored[result.source] = SourceStored(**warehouse.store_raw(
                conn, result.source, file, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds,
                fetch_seq=result.fetch_seq, index_build_memory=settings.index_build_memory, kind=result.kind,
                ids_ascending=result.ids_ascending))
    return Stored(stored)


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


def normalize(conn, stored: Stored, sources: Mapping[str, Source], *, run_id: str, settings: Settings,
              full_refresh: bool = False) -> Normalized:
    """Validate and map the stored sources' changed records with each source's rules (sources by name)."""
    normalized = {}
    for name, result in stored.sources.items():
        normalized[name] = SourceNormalized(**warehouse.normalize(
            conn, name, _of_run(name, sources).normalization, run_id=run_id, full_refresh=full_refresh,
            lock_timeout_seconds=settings.lock_timeout_seconds, expected_staged=result.stored))
    return Normalized(normalized)


def _of_run(name: str, sources: Mapping[str, Source]) -> Source:
    if name not in sources:
        raise ValueError(f"source {name!r} was stored but is not among the run's sources ({', '.join(sources)})")
    return sources[name]


def upsert(conn, normalized: Normalized, sources: Mapping[str, Source], *, run_id: str, settings: Settings,
           full_refresh: bool = False) -> Upserted:
    """Merge each normalized source into normalized_data, writing only real changes, and soft-delete what a whole
    read no longer contains (sources by name). A source whose deletes the guard refuses commits nothing and is
    failed in the result; the others load."""
    upserted, failed = {}, {}
    for name, result in normalized.sources.items():
        source = _of_run(name, sources)
        try:
            written = warehouse.upsert(
                conn, name, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds,
                expected_staged=result.valid, index_build_memory=settings.index_build_memory, kind=source.kind,
                deletes_missing=source.deletes_missing(full_refresh), max_delete_fraction=settings.max_delete_fraction)
        except DeleteRefused as exc:
            log.error("%s", exc)
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        upserted[name] = SourceUpserted(**written, processed=result.staged)
    return Upserted(upserted, failed)


def checkpoint(conn, upserted: Upserted, *, run_id: str, settings: Settings,
               full_refresh: bool = False) -> Checkpointed:
    """Advance each upserted source's checkpoint to the highest id this run committed."""
    return Checkpointed({
        name: SourceCheckpoint(**warehouse.advance_checkpoint(
            conn, name, run_id=run_id, processed=result.processed,
            lock_timeout_seconds=settings.lock_timeout_seconds, full_refresh=full_refresh))
        for name, result in upserted.sources.items()
    })


def record_run(conn, outcome: runs.RunOutcome, *, settings: Settings) -> Recorded:
    """Write the run's etl_runs row (runs.RunOutcome.of builds the outcome from the steps' results) and, in the
    same transaction, how each of its sources fared (GET /sources); sweep the work rows of runs abandoned more
    than settings.staging_retention_hours ago (runs.record)."""
    with conn.transaction():
        row_id = runs.record(conn, outcome, retention_hours=settings.staging_retention_hours)
        for name, (kind, error) in outcome.source_statuses().items():
            warehouse.record_source_status(conn, name, kind=kind, run_id=outcome.run_id, error=error)
    return Recorded(etl_run_id=row_id, status=outcome.status, sources=outcome.source_counts())
