"""The pipeline's gauges, read at scrape time from its bookkeeping (etl_checkpoint, etl_runs) by two bounded queries
through the request's read-only connection and scope: what a team alerts on per source, and the newest run.

Read rather than emitted by the tasks: the tables already hold every figure, a scrape always shows the latest
committed state (a task's push would be lost with its process, and a worker that never ran a task would show none),
and row-level security gives a scraper's credential only its sources."""

from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily

from webapp import db, scopes

# the outcomes of sluice_source_last_run_rows, as etl_runs.source_counts names them
OUTCOMES = ("fetched", "inserted", "updated", "unchanged", "rejected", "deleted")
DELETE_REFUSED = "DeleteRefused"  # sluice.errors.DeleteRefused's name in a failure summary


@dataclass(frozen=True)
class PipelineState:
    sources: list[dict]
    last_run: dict | None
    staleness_limit_seconds: float


def read(staleness_limit_hours: float) -> PipelineState:
    """The rows behind the gauges, in the request's scope; DatabaseUnavailable when the warehouse cannot answer."""
    sources = db.fetch_all("metrics_sources", {"sources": scopes.current().source_list()})
    return PipelineState(sources, db.fetch_one("metrics_last_run"), staleness_limit_hours * 3600)


class PipelineCollector:
    """A prometheus_client collector of one scrape's PipelineState (read before, in the request)."""

    def __init__(self, state: PipelineState):
        self.state = state

    def collect(self):
        def per_source(name: str, documentation: str, labels=("source",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=labels)

        last_success = per_source("sluice_source_last_success_timestamp_seconds",
                                  "When the source's last successful load ended (Unix time; 0: never)")
        rows = per_source("sluice_source_last_run_rows", "Records of the source's newest run that fetched it, by "
                          "outcome", labels=("source", "outcome"))
        live = per_source("sluice_source_live_rows", "The source's rows /data serves (soft-deleted ones left out)")
        failed = per_source("sluice_source_last_run_failed", "1 when the source's latest run failed, else 0")
        refused = per_source("sluice_source_deletes_refused",
                             "1 when the source's latest run was refused by the delete guard, else 0")
        staleness = per_source("sluice_source_staleness_limit_seconds",
                               "How old the source's last success may get before it is stale "
                               "(SLUICE_MAX_STALENESS_HOURS)")
        for source in self.state.sources:
            name = source["source"]
            last_success.add_metric([name], source["last_success_at"] or 0)
            for outcome in OUTCOMES if source["counts"] is not None else ():
                rows.add_metric([name, outcome], source["counts"].get(outcome) or 0)
            live.add_metric([name], source["live_rows"])
            failed.add_metric([name], int(source["failed"]))
            refused.add_metric([name], int(source["failed"] and source["last_error_class"] == DELETE_REFUSED))
            staleness.add_metric([name], self.state.staleness_limit_seconds)
        yield from (last_success, rows, live, failed, refused, staleness)
        run = self.state.last_run
        if run is not None:
            yield GaugeMetricFamily("sluice_last_run_duration_seconds", "How long the newest finished run took",
                                    value=run["duration_seconds"] or 0)
            yield GaugeMetricFamily("sluice_last_run_success", "1 when the newest finished run succeeded, else 0",
                                    value=int(run["success"]))
