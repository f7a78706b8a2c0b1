"""The pipeline, one function per step, without Airflow: plain values in, a result (sluice.results) out.

    init_schema → ingest (once per source) → store_raw → normalize → upsert → checkpoint → record_run

Each step takes a psycopg 3 connection and the Settings of the run (read by the caller: the Airflow edge,
the bench, a test). Every step from ingest to checkpoint handles one source (its lane: the DAG maps them over
the catalog, so one source's failure or retry never touches another's) and takes the results of the lane's
earlier steps; each commits in one transaction holding the source's lock (sluice.warehouse).
Staged files are named by a URI and opened with an Opener: a local path or file:// URI
with open_local, an object store through the caller's own opener.
"""

import logging
import socket
import time
from collections.abc import Callable
from typing import BinaryIO, ContextManager

from sluice import progress, runs, staging, warehouse
from sluice.errors import StagedFileMissing
from sluice.migrations import Changes
from sluice.results import Checkpointed, Ingested, Normalized, Recorded, Stored, Upserted
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


def store_raw(conn, ingested: Ingested, open_file: Opener = open_local, *, run_id: str, settings: Settings,
              worker: str | None = None) -> Stored:
    """Load the source's staged file into its raw table. A batch this run already stored (a cleared or retried
    task) is not read again, so its staged file may be gone; otherwise a file that cannot be opened here fails,
    naming this worker (worker: default its fully qualified host name) and the one that wrote it."""
    if (done := warehouse.stored_already(conn, ingested.source, run_id=run_id,
                                         fetch_seq=ingested.fetch_seq)) is not None:
        return done
    with open_staged(open_file, ingested, worker or socket.getfqdn()) as file:
        return warehouse.store_raw(
            conn, ingested.source, file, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds,
            fetch_seq=ingested.fetch_seq, index_build_memory=settings.index_build_memory, kind=ingested.kind,
            ids_ascending=ingested.ids_ascending, whole_read=ingested.whole_read)


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
              full_refresh: bool = False) -> Normalized:
    """Validate and map the source's stored records that changed with the source's rules."""
    return warehouse.normalize(conn, source.name, source.normalization, run_id=run_id, full_refresh=full_refresh,
                               lock_timeout_seconds=settings.lock_timeout_seconds, stored=stored, kind=source.kind)


def upsert(conn, source: Source, stored: Stored, normalized: Normalized, *, run_id: str, settings: Settings,
           full_refresh: bool = False) -> Upserted:
    """Merge the source's normalized rows into normalized_data, writing only real changes, and soft-delete what
    a whole read no longer contains: DeleteRefused, and nothing of the source commits, beyond the guard."""
    return warehouse.upsert(
        conn, source.name, run_id=run_id, lock_timeout_seconds=settings.lock_timeout_seconds, stored=stored,
        normalized=normalized, index_build_memory=settings.index_build_memory, kind=source.kind,
        deletes_missing=source.deletes_missing(full_refresh), max_delete_fraction=settings.max_delete_fraction)


def checkpoint(conn, stored: Stored, upserted: Upserted, *, run_id: str, settings: Settings,
               full_refresh: bool = False) -> Checkpointed:
    """Advance the source's checkpoint to the highest id this run stored (stored.last_id), and count what it
    processed once however often the step runs."""
    return warehouse.advance_checkpoint(
        conn, upserted.source, run_id=run_id, last_id=stored.last_id, processed=upserted.processed,
        lock_timeout_seconds=settings.lock_timeout_seconds, full_refresh=full_refresh)


def record_run(conn, outcome: runs.RunOutcome, *, settings: Settings) -> Recorded:
    """Write the run's etl_runs row (runs.RunOutcome.of builds the outcome from the steps' results) and, in the
    same transaction, how each of its sources fared (GET /sources); sweep the work rows of runs abandoned more
    than settings.staging_retention_hours ago (runs.record)."""
    with conn.transaction():
        row_id = runs.record(conn, outcome, retention_hours=settings.staging_retention_hours)
        for name, (kind, failure) in outcome.source_statuses().items():
            warehouse.record_source_status(conn, name, kind=kind, run_id=outcome.run_id, failure=failure)
    return Recorded(etl_run_id=row_id, status=outcome.status, sources=outcome.source_counts())
