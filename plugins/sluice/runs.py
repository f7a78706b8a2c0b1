"""The etl_runs record: what one run fetched, wrote and rejected per source, and why it failed."""

import logging
from dataclasses import dataclass, field
from datetime import datetime

from psycopg.types.json import Jsonb

from sluice import progress, queries
from sluice.redact import redact
from sluice.settings import SOURCES

# per source that loaded: fetched = inserted + updated + unchanged + superseded + rejected
COUNTS = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected")

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    run_id: str
    run_type: str | None
    started_at: datetime
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    # task results as returned through XCom (None for a task that did not succeed)
    ingested: dict[str, dict | None] = field(default_factory=dict)
    stored: dict | None = None
    normalized: dict | None = None
    upserted: dict | None = None
    errors: list[str] = field(default_factory=list)

    def source_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for source in SOURCES:
            ingest = self.ingested.get(source)
            if ingest is None:
                continue
            stored = _of(self.stored, source)
            normalized = _of(self.normalized, source)
            upserted = _of(self.upserted, source)
            counts[source] = {
                "fetched": ingest["records"] + ingest["problems"],
                "inserted": upserted.get("inserted", 0),
                "updated": upserted.get("updated", 0),
                "unchanged": upserted.get("unchanged", 0) + normalized.get("skipped_unchanged", 0),
                "rejected": stored.get("rejected", 0) + normalized.get("rejected", 0),
                # records a later fetch had already stored (store_raw) or replaced in raw meanwhile (upsert):
                # that fetch's run loads them
                "superseded": stored.get("superseded", 0) + upserted.get("superseded", 0),
                "loaded": bool(upserted),
            }
        return counts

    @property
    def status(self) -> str:
        return "failed" if self.errors else "success"


def _of(result: dict | None, source: str) -> dict:
    return (result or {}).get("sources", {}).get(source, {})


def record(conn, outcome: RunOutcome) -> int:
    """Write (or rewrite, for a cleared and re-run run) the run's etl_runs row; returns its id."""
    per_source = outcome.source_counts()
    totals = {name: sum(counts[name] for counts in per_source.values()) for name in COUNTS}
    with conn.transaction():
        (row_id,) = conn.execute(queries.query("pipeline.sql", "record_run"), {
            "run_id": outcome.run_id,
            "run_type": outcome.run_type,
            "data_interval_start": outcome.data_interval_start,
            "data_interval_end": outcome.data_interval_end,
            "started_at": outcome.started_at,
            "records_processed": sum(c["fetched"] for c in per_source.values() if c["loaded"]),
            "status": outcome.status,
            "error_message": redact("\n".join(outcome.errors)) or None,
            "source_counts": Jsonb(per_source),
            **totals,
        }).fetchone()
        conn.execute(queries.query("pipeline.sql", "delete_run_work"), {"run_id": outcome.run_id})
    failed = f" ({len(outcome.errors)} tasks did not succeed, see etl_runs.error_message)" if outcome.errors else ""
    log.info("run %s recorded as %s%s in etl_runs (id %d): %s", outcome.run_id, outcome.status, failed, row_id,
             ", ".join(f"{progress.count(totals[name])} {name}" for name in COUNTS))
    return row_id
