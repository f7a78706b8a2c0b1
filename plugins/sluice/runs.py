"""The etl_runs record: what one run fetched, wrote and rejected per source, and why it failed."""

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.types.json import Jsonb

from sluice import locks, progress, queries, settings
from sluice.failures import Failure
from sluice.results import LANE, Checkpointed, Ingested, Normalized, Stored, Upserted

# per source that loaded: fetched = inserted + updated + unchanged + superseded + rejected (the records), and
# live_after = live_before + inserted + renormalized_inserted - deleted + undeleted (its live rows)
COUNTS = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected")

log = logging.getLogger(__name__)

# how long record_run waits for the work tables' lock before deleting its rows one by one instead: longer than
# PostgreSQL's deadlock_timeout (1 s), after which an autovacuum of the tables that blocks the lock cancels itself
WORK_LOCK_TIMEOUT_SECONDS = 3


@dataclass
class Lane:
    """One source's steps in the run: each step's result (None for a step that did not succeed)."""

    source: str
    ingested: Ingested | None = None
    stored: Stored | None = None
    normalized: Normalized | None = None
    upserted: Upserted | None = None
    checkpointed: Checkpointed | None = None

    @property
    def loaded(self) -> bool:
        """Its rows were merged into normalized_data (whatever came after)."""
        return self.upserted is not None

    @property
    def done(self) -> bool:
        """Every step succeeded: its work rows and staged file are no longer needed."""
        return self.checkpointed is not None

    def counts(self) -> dict:
        # zero counts from a step that failed or did not run
        stored = self.stored or Stored(self.source)
        normalized = self.normalized or Normalized(self.source)
        upserted = self.upserted or Upserted(self.source)
        counts = {
            "fetched": self.ingested.fetched if self.ingested else 0,
            "inserted": upserted.inserted,
            "updated": upserted.updated,
            "unchanged": upserted.unchanged + normalized.skipped_unchanged,
            "rejected": stored.rejected + normalized.rejected,
            # records a later fetch had already stored (store_raw) or replaced in raw meanwhile (upsert): that
            # fetch's run loads them
            "superseded": stored.superseded + upserted.superseded,
            "deleted": upserted.deleted,
            "undeleted": upserted.undeleted,
            "deletes_skipped": upserted.deletes_skipped or None,
            "live_before": upserted.live_before,
            "live_after": upserted.live_after,
            "loaded": self.loaded,
        }
        if normalized.renormalized or normalized.renormalized_rejected:
            # only after a changed declaration: stored records the run did not fetch, normalized again
            counts.update(renormalized=normalized.renormalized, renormalized_inserted=upserted.renormalized_inserted,
                          renormalized_updated=upserted.renormalized_updated,
                          renormalized_rejected=normalized.renormalized_rejected)
        return counts


_LANE_FIELDS = {kind: name for kind, name in zip(LANE, ("ingested", "stored", "normalized", "upserted",
                                                        "checkpointed"))}


@dataclass
class RunOutcome:
    run_id: str
    run_type: str | None
    started_at: datetime
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    # each source's lane, by name, in catalog order
    lanes: dict[str, Lane] = field(default_factory=dict)
    # why the run failed: a source's failure names it, one of the run's own tasks (init_schema) does not
    failures: list[Failure] = field(default_factory=list)
    # each source's kind, from the catalog: a source that failed before its ingest succeeded has no other
    kinds: dict[str, str] = field(default_factory=dict)
    # the larger deletes a person accepted for this run (DAG param accept_deletes): {source: fraction}
    accept_deletes: dict[str, float] | None = None
    # the sources the run skipped (not due), each with why: neither failed nor loaded
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Iterable, **run) -> "RunOutcome":
        """The outcome of a run from its lanes' step results, in any order (sluice.results; others are
        ignored). A source may have one result per step."""
        lanes: dict[str, Lane] = {}
        for result in results:
            name = _LANE_FIELDS.get(type(result))
            if name is None:
                continue
            lane = lanes.setdefault(result.source, Lane(result.source))
            if getattr(lane, name) is not None:
                raise ValueError(f"source {result.source!r} has two {result.STEP} results in run {run['run_id']}")
            setattr(lane, name, result)
        return cls(**run, lanes=lanes)

    @property
    def failed_sources(self) -> dict[str, Failure]:
        return {failure.source: failure for failure in self.failures if failure.source is not None}

    def kind(self, source: str) -> str | None:
        lane = self.lanes.get(source)
        return (lane and lane.ingested and lane.ingested.kind) or self.kinds.get(source)

    def source_counts(self) -> dict[str, dict]:
        """The counts of every source that was fetched."""
        return {name: lane.counts() for name, lane in self.lanes.items() if lane.ingested is not None}

    def done_sources(self) -> list[str]:
        return [name for name, lane in self.lanes.items() if lane.done and name not in self.failed_sources]

    def source_statuses(self) -> dict[str, tuple[str | None, Failure | None]]:
        """(kind, failure) of each source of the run: failure None when it loaded, kind None when unknown (the
        kind recorded before stays). A source that failed gets its failure; one fetched but not loaded otherwise
        failed with the run's first failure."""
        run_failure = next(iter(self.failures), None) or Failure(step="record_run", source=None,
                                                                  error_class="NotLoaded", message="not loaded")
        statuses = {name: (self.kind(name), None if lane.loaded else run_failure)
                    for name, lane in self.lanes.items() if lane.ingested is not None}
        for name, failure in self.failed_sources.items():
            statuses[name] = (self.kind(name), failure)
        return statuses

    def error_lines(self) -> list[str]:
        """Why the run failed, one line per failure: <step>: <error>, or <step>[<source>]: <error>."""
        return [f"{failure.step}{'' if failure.source is None else f'[{failure.source}]'}: {failure.message}"
                for failure in self.failures]

    def summaries(self) -> list[dict]:
        """What may be served of why the run failed: each failure's summary (no exception text)."""
        return [failure.summary() for failure in self.failures]

    @property
    def status(self) -> str:
        return "failed" if self.failures else "success"


def record(conn, outcome: RunOutcome, *, retention_hours: float = settings.STAGING_RETENTION_HOURS) -> int:
    """Write (or rewrite, for a cleared and re-run run) the run's etl_runs row; returns its id. The work rows of
    its sources that loaded go with it; a failed source's stay for a clear of its tasks to redo them, until the
    retention (SLUICE_STAGING_RETENTION_HOURS) sweeps them, with those of abandoned runs."""
    per_source = outcome.source_counts()
    totals = {name: sum(counts[name] for counts in per_source.values()) for name in COUNTS}
    with conn.transaction():
        # first: its table lock must not wait while this transaction holds row locks another run may want
        # (the sweep's are on abandoned runs' rows, which no run wants)
        _delete_work(conn, outcome.run_id, outcome.done_sources(), retention_hours)
        (row_id,) = conn.execute(queries.query("pipeline.sql", "record_run"), {
            "run_id": outcome.run_id,
            "run_type": outcome.run_type,
            "data_interval_start": outcome.data_interval_start,
            "data_interval_end": outcome.data_interval_end,
            "started_at": outcome.started_at,
            "records_processed": sum(c["fetched"] for c in per_source.values() if c["loaded"]),
            "status": outcome.status,
            # each failure's message was masked where it happened, by its connection's values and by patterns
            "error_message": "\n".join(outcome.error_lines()) or None,
            "errors": Jsonb(outcome.summaries()) if outcome.failures else None,
            "source_counts": Jsonb(per_source),
            "accept_deletes": Jsonb(outcome.accept_deletes) if outcome.accept_deletes else None,
            "skipped": Jsonb(outcome.skipped),
            **totals,
        }).fetchone()
    problems = outcome.error_lines()
    failed = f" ({len(problems)} tasks or sources failed, see etl_runs.error_message)" if problems else ""
    if outcome.skipped:
        failed += f" (skipped {', '.join(outcome.skipped)}: see etl_runs.skipped)"
    log.info("run %s recorded as %s%s in etl_runs (id %d): %s", outcome.run_id, outcome.status, failed, row_id,
             ", ".join(f"{progress.count(totals[name])} {name}" for name in COUNTS))
    return row_id


def _delete_work(conn, run_id: str, sources: list[str], retention_hours: float) -> None:
    """Delete the work rows of the run's given sources, and of abandoned runs, with its transaction: when no
    other source has any, by emptying the tables whole (a truncate, constant cost), decided under their lock;
    otherwise row by row. Step results older than the retention go too."""
    q = functools.partial(queries.query, "pipeline.sql")
    retention = {"run_id": run_id, "retention": timedelta(hours=retention_hours)}
    conn.execute(q("sweep_old_steps"), retention)
    abandoned = sorted(conn.execute(q("sweep_abandoned_work"), retention).fetchall())
    if abandoned:
        log.info("swept the work rows of %d sources of runs abandoned more than %g h ago: %s", len(abandoned),
                 retention_hours, ", ".join(f"{source} of {run} (stored {_utc(at)})" for run, source, at in abandoned))
    pairs = {"run_ids": [run_id] * len(sources) + [run for run, _, _ in abandoned],
             "sources": list(sources) + [source for _, source, _ in abandoned]}
    others = {"run_id": run_id, "sources": list(sources)}
    if not conn.execute(q("work_of_others"), others).fetchone()[0] and _lock_work_tables(conn):
        # under the lock no other run's transaction is writing them; ask again, it may have committed meanwhile
        if not conn.execute(q("work_of_others"), others).fetchone()[0]:
            conn.execute(q("truncate_work"))
            conn.execute(q("unregister_work"), pairs)
            return
    conn.execute(q("delete_work_of"), pairs)
    conn.execute(q("unregister_work"), pairs)


def _utc(at: datetime) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M %Z}"


def _lock_work_tables(conn) -> bool:
    """Lock the work tables, waiting at most WORK_LOCK_TIMEOUT; False when another transaction keeps them longer
    (a run working on its rows: they are then deleted row by row, and record_run never waits long)."""
    q = functools.partial(queries.query, "pipeline.sql")
    try:
        # the timeout is for this lock only: the rest of record_run waits for row locks as before
        with conn.transaction(), locks.waiting_at_most(conn, WORK_LOCK_TIMEOUT_SECONDS):
            conn.execute(q("lock_work_tables"))
    except psycopg.errors.LockNotAvailable:
        log.info("the work tables are in use by another transaction; this run's rows are deleted row by row")
        return False
    return True
