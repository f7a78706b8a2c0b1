"""/stats: pipeline totals, live and deleted rows and rejects of every source, and the newest run's counts."""

from flask import Blueprint, request

from webapp import audit, auth, db, scopes
from webapp.openapi import documented
from webapp.responses import conditional_json
from webapp.routes_runs import within_scope
from webapp.schemas import load_query, no_query_schema, stats_schema

blueprint = Blueprint("stats", __name__)


def _per_source(rows: list[dict], value: str, sources: set[str]) -> dict[str, int]:
    found = {row["source"]: row[value] for row in rows}
    return {source: found.get(source) or 0 for source in sorted(sources)}


@blueprint.get("/stats")
@documented(responses={200: stats_schema}, errors=(400, 503), etag="strong")
def show_stats():
    """Totals over all ETL runs, live and deleted rows and rejects per source, and the newest run."""
    auth.require_sources()
    load_query(no_query_schema, request.args)
    scope = scopes.current()
    allowed = {"sources": scope.source_list()}
    success = db.fetch_one("stats_last_of_status", {"status": "success"}) or {}
    failure = db.fetch_one("stats_last_of_status", {"status": "failed"}) or {}
    rows = db.fetch_all("stats_rows_per_source", allowed)
    rejects = db.fetch_all("stats_rejects_per_source", allowed)
    last_run = db.fetch_one("stats_last_run")
    # every source: those of the warehouse, and any that only ever had rejects
    sources = {row["source"] for row in rows + rejects}
    audit.records(sources, len(sources))
    return conditional_json(stats_schema.dump({
        **db.fetch_one("stats_totals", allowed),
        "last_success": success.get("at"),
        "last_failure": failure.get("at"),
        # why runs failed is operations data
        "last_failure_errors": within_scope(failure, scope).get("errors") if scope.operations else None,
        "rows_per_source": _per_source(rows, "row_count", sources),
        "deleted_per_source": _per_source(rows, "deleted", sources),
        "deleted_total": sum(row["deleted"] for row in rows),
        "rejects_per_source": _per_source(rejects, "rejected", sources),
        "last_run": within_scope(last_run, scope) if last_run else None,
    }))
