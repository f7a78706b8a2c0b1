"""The etl_runs record: what one run fetched, wrote and rejected per source, and why it failed."""

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from psycopg.types.json import Jsonb

from sluice import progress, queries
from sluice.redact import redact
from sluice.results import Ingested, Normalized, Stored, Upserted

# per source that loaded: fetched = inserted + updated + unchanged + superseded + rejected
COUNTS = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected")

log = logging.getLogger(__name__)
# a record_run error of a failed ingest task: "ingest_<kind>: <why>" (the seed source of that kind is named so)
# how record_run names a failed ingest instance: ingest_<kind>[<source>]: <error>
_FAILED_INGEST = re.compile(r"ingest_[a-z0-9_]+\[(?P<source>[a-z][a-z0-9_]{0,62})\]: (?P<error>.*)", re.DOTALL)


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
    errors: list[str] = field(default_factory=list)

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
        return cls(**run, ingested=ingested, stored=merged(Stored), normalized=merged(Normalized),
                   upserted=merged(Upserted))

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
                "loaded": self.upserted is not None and source in self.upserted.sources,
            }
        return counts

    def source_statuses(self) -> dict[str, tuple[str | None, str | None]]:
        """(kind, error) of each source of the run: error None when it loaded, kind None when unknown. A source
        ingested but not loaded failed with the run's errors; one whose ingest failed is named by its mapped
        instance (ingest_<kind>[<source>]) and gets that instance's error."""
        counts = self.source_counts()
        # another source's failed ingest is not why this one did not load
        why = "\n".join(error for error in self.errors if not _FAILED_INGEST.fullmatch(error)) or "not loaded"
        statuses = {ingest.source: (ingest.kind, None if counts[ingest.source]["loaded"] else why)
                    for ingest in self.ingested}
        for error in self.errors:
            failed = _FAILED_INGEST.fullmatch(error)
            if failed and failed["source"] not in statuses:
                statuses[failed["source"]] = (None, failed["error"])  # the kind recorded before stays
        return statuses

    @property
    def status(self) -> str:
        return "failed" if self.errors else "success"


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
