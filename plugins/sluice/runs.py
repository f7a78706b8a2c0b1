"""The etl_runs record: what one run fetched, wrote and rejected per source, and why it failed."""

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.types.json import Jsonb

from sluice import progress, queries, settings
from sluice.redact import redact
from sluice.results import Ingested, Normalized, Stored, Upserted

# per source that loaded: fetched = inserted + updated + unchanged + superseded + rejected (the records), and
# live_after = live_before + inserted - deleted + undeleted (its live rows)
COUNTS = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected")

log = logging.getLogger(__name__)

# how long record_run waits for the work tables' lock before deleting its rows one by one instead: longer than
# PostgreSQL's deadlock_timeout (1 s), after which an autovacuum of the tables that blocks the lock cancels itself
WORK_LOCK_TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class SourceFailure:
    """Why one source of the run failed: the task it failed in (a mapped ingest instance, upsert's delete
    guard), the error, and its kind when known."""

    task: str
    error: str
    kind: str | None = None


@dataclass
class RunOutcome:
    run_id: str
    run_type: str | None
    started_at: datetime
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    # the results of the steps that succeeded (None for a step that did not)
    ingested: list[Ingested] = field(default_factory=list)
    stored: Stored | None = None
    normalized: Normalized | None = None
    upserted: Upserted | None = None
    # errors of tasks of the whole run, and the sources that failed on their own (by name)
    errors: list[str] = field(default_factory=list)
    failed_sources: dict[str, SourceFailure] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Iterable, **run) -> "RunOutcome":
        """The outcome of a run from its steps' results, in any order (sluice.results; others are ignored).
        A step may have several results (one per source or group of sources); no source may appear twice."""
        results = list(results)

        def merged(kind):
            found = [result for result in results if isinstance(result, kind)]
            by_source = {}
            for result in found:
                for name, counts in result.sources.items():
                    if name in by_source:
                        raise ValueError(f"source {name!r} has two {kind.STEP} results in run {run['run_id']}")
                    by_source[name] = counts
            return kind(by_source) if found else None

        ingested = [result for result in results if isinstance(result, Ingested)]
        names = [result.source for result in ingested]
        if len(set(names)) != len(names):
            raise ValueError(f"a source was ingested twice in run {run['run_id']}: {', '.join(names)}")
        kinds = {result.source: result.kind for result in ingested}
        # the sources upsert refused (its delete guard) failed, as much as those whose ingest did
        refused = {name: SourceFailure("upsert", error, kinds.get(name))
                   for result in results if isinstance(result, Upserted) for name, error in result.failed.items()}
        failed_sources = {**run.pop("failed_sources", {}), **refused}
        return cls(**run, ingested=ingested, stored=merged(Stored), normalized=merged(Normalized),
                   upserted=merged(Upserted), failed_sources=failed_sources)

    def source_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for ingest in self.ingested:
            source = ingest.source
            # zero counts from a step that failed or did not handle the source
            stored = (self.stored or Stored()).of(source)
            normalized = (self.normalized or Normalized()).of(source)
            upserted = (self.upserted or Upserted()).of(source)
            counts[source] = {
                "fetched": ingest.fetched,
                "inserted": upserted.inserted,
                "updated": upserted.updated,
                "unchanged": upserted.unchanged + normalized.skipped_unchanged,
                "rejected": stored.rejected + normalized.rejected,
                # records a later fetch had already stored (store_raw) or replaced in raw meanwhile (upsert):
                # that fetch's run loads them
                "superseded": stored.superseded + upserted.superseded,
                "deleted": upserted.deleted,
                "undeleted": upserted.undeleted,
                "deletes_skipped": upserted.deletes_skipped or None,
                "live_before": upserted.live_before,
                "live_after": upserted.live_after,
                "loaded": self.upserted is not None and source in self.upserted.sources,
            }
        return counts

    def source_statuses(self) -> dict[str, tuple[str | None, str | None]]:
        """(kind, error) of each source of the run: error None when it loaded, kind None when unknown (the kind
        recorded before stays). A source that failed on its own gets its error; one ingested but not loaded
        otherwise failed with the run's errors."""
        counts = self.source_counts()
        why = "\n".join(self.errors) or "not loaded"
        statuses = {ingest.source: (ingest.kind, None if counts[ingest.source]["loaded"] else why)
                    for ingest in self.ingested}
        for name, failure in self.failed_sources.items():
            statuses[name] = (failure.kind or statuses.get(name, (None, None))[0], failure.error)
        return statuses

    def error_lines(self) -> list[str]:
        """Why the run failed: the run's errors, then each failed source's as <task>[<source>]: <error>."""
        return [*self.errors, *(f"{failure.task}[{name}]: {failure.error}"
                                for name, failure in self.failed_sources.items())]

    @property
    def status(self) -> str:
        return "failed" if self.errors or self.failed_sources else "success"


def record(conn, outcome: RunOutcome, *, retention_hours: float = settings.STAGING_RETENTION_HOURS) -> int:
    """Write (or rewrite, for a cleared and re-run run) the run's etl_runs row; returns its id. The work rows of
    runs abandoned more than retention_hours ago (SLUICE_STAGING_RETENTION_HOURS) go with its own."""
    per_source = outcome.source_counts()
    totals = {name: sum(counts[name] for counts in per_source.values()) for name in COUNTS}
    with conn.transaction():
        # first: its table lock must not wait while this transaction holds row locks another run may want
        # (the sweep's are on abandoned runs' step results, which no run wants)
        _delete_work(conn, outcome.run_id, retention_hours)
        (row_id,) = conn.execute(queries.query("pipeline.sql", "record_run"), {
            "run_id": outcome.run_id,
            "run_type": outcome.run_type,
            "data_interval_start": outcome.data_interval_start,
            "data_interval_end": outcome.data_interval_end,
            "started_at": outcome.started_at,
            "records_processed": sum(c["fetched"] for c in per_source.values() if c["loaded"]),
            "status": outcome.status,
            "error_message": redact("\n".join(outcome.error_lines())) or None,
            "source_counts": Jsonb(per_source),
            **totals,
        }).fetchone()
    problems = outcome.error_lines()
    failed = f" ({len(problems)} tasks or sources failed, see etl_runs.error_message)" if problems else ""
    log.info("run %s recorded as %s%s in etl_runs (id %d): %s", outcome.run_id, outcome.status, failed, row_id,
             ", ".join(f"{progress.count(totals[name])} {name}" for name in COUNTS))
    return row_id


def _delete_work(conn, run_id: str, retention_hours: float) -> None:
    """Delete the run's rows of the work tables, and abandoned runs', with its transaction: when no other run has
    any, by emptying the tables whole (a truncate, constant cost), decided under their lock; otherwise row by row."""
    q = functools.partial(queries.query, "pipeline.sql")
    keys = {"run_id": run_id}
    abandoned = _sweep_abandoned_steps(conn, run_id, retention_hours)
    if not conn.execute(q("other_runs_at_work"), keys).fetchone()[0] and _lock_work_tables(conn):
        # under the lock no other run's transaction is writing them; ask again, it may have committed meanwhile
        if not conn.execute(q("other_runs_at_work"), keys).fetchone()[0]:
            conn.execute(q("truncate_work"))
            conn.execute(q("delete_run_steps"), keys)
            return
    conn.execute(q("delete_run_work"), {"run_ids": [run_id, *abandoned]})
    conn.execute(q("delete_run_steps"), keys)


def _sweep_abandoned_steps(conn, run_id: str, retention_hours: float) -> list[str]:
    """Delete the step results of runs whose newest one is older than the retention (killed, or marked failed by
    hand, before their record_run); returns those runs, whose work rows the caller deletes. A retried or cleared
    run within the retention keeps its rows."""
    swept = conn.execute(queries.query("pipeline.sql", "sweep_abandoned_steps"),
                         {"run_id": run_id, "retention": timedelta(hours=retention_hours)}).fetchall()
    if swept:
        log.info("swept the work rows of %d runs abandoned more than %g h ago: %s", len(swept), retention_hours,
                 ", ".join(f"{abandoned} (last step result {at.astimezone(timezone.utc):%Y-%m-%d %H:%M %Z})"
                           for abandoned, at in swept))
    return [abandoned for abandoned, _ in swept]


def _lock_work_tables(conn) -> bool:
    """Lock the work tables, waiting at most WORK_LOCK_TIMEOUT; False when another transaction keeps them longer
    (a run working on its rows: they are then deleted row by row, and record_run never waits long)."""
    q = functools.partial(queries.query, "pipeline.sql")
    try:
        with conn.transaction():
            conn.execute(q("set_lock_timeout"), {"timeout": f"{int(WORK_LOCK_TIMEOUT_SECONDS * 1000)}ms"})
            conn.execute(q("lock_work_tables"))
            # the timeout was for this lock only: the rest of record_run waits for row locks as before
            conn.execute(q("set_lock_timeout"), {"timeout": "0"})
    except psycopg.errors.LockNotAvailable:
        log.info("the work tables are in use by another transaction; this run's rows are deleted row by row")
        return False
    finally:
        conn.execute(q("set_lock_timeout"), {"timeout": "0"})
    return True
