"""/runs: the pipeline's run records, newest first, and the records each run rejected."""

from flask import Blueprint, request
from werkzeug.exceptions import NotFound

from webapp import audit, auth, db, scopes
from webapp.openapi import documented
from webapp.routes_data import check_known
from webapp.schemas import (MAX_REJECT_PAYLOAD_CHARS, MAX_REJECT_TEXT_CHARS, load_query, no_query_schema,
                            page_query_schema, rejects_page_schema, rejects_query_schema, run_path_schema,
                            run_quality_schema, runs_page_schema)

blueprint = Blueprint("runs", __name__)
COUNTS = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected")


def within_scope(run: dict, scope: scopes.Scope) -> dict:
    """A run's record as a credential limited to some sources sees it: only those sources' counts, errors, skips
    and accepted deletes, and the run's totals summed over them (a run's totals would count the other sources)."""
    if scope.sources is None:
        return run
    counts = scope.only_allowed(run.get("source_counts") or {})
    limited = {**run, "source_counts": counts}
    for name in COUNTS:
        if name in run:
            limited[name] = sum(value.get(name) or 0 for value in counts.values() if isinstance(value, dict))
    for name in ("skipped", "accept_deletes"):
        if name in run:
            limited[name] = scope.only_allowed(run[name] or {})
    if "errors" in run:
        # a summary without a source is the run's own failure; one of another source is not shown
        limited["errors"] = [error for error in run["errors"] or []
                             if not isinstance(error, dict) or error.get("source") is None
                             or scope.allows(error["source"])]
    return limited


def _page(query: str, count_query: str, args: dict, params: dict | None = None) -> dict:
    page, page_size = args["page"], args["page_size"]
    params = params or {}
    rows = db.fetch_all(query, {**params, "limit": page_size + 1, "offset": (page - 1) * page_size})
    return {"data": rows[:page_size], "total": db.fetch_one(count_query, params)["total"],
            "page": page, "page_size": page_size, "has_more": len(rows) > page_size}


@blueprint.get("/runs")
@documented(query=page_query_schema, responses={200: runs_page_schema}, errors=(400, 503))
def list_runs():
    """ETL runs, newest first (started_at desc, id desc)."""
    auth.require_operations()
    args = load_query(page_query_schema, request.args)
    page = _page("runs_page", "runs_count", args)
    scope = scopes.current()
    page["data"] = [within_scope(run, scope) for run in page["data"]]
    audit.records(scope.source_list(), len(page["data"]))
    return runs_page_schema.dump(page)


# `id`: Airflow run ids may hold any character; ':' and '+' need no encoding in a URL path.
@blueprint.get("/runs/<id:run_id>/rejects")
@documented(path=run_path_schema, query=rejects_query_schema, responses={200: rejects_page_schema},
            errors=(400, 404, 503))
def list_rejects(run_id):
    """Records a run rejected, with its reason and raw payload as received (credentials masked, long ones cut)."""
    auth.require_operations()
    key = run_path_schema.load({"run_id": run_id})
    args = load_query(rejects_query_schema, request.args)
    check_known(args.get("source"))
    if not db.fetch_one("run_exists", key)["found"]:
        raise NotFound(f"no run with run_id {key['run_id']!r}")
    bounds = {"max_payload": MAX_REJECT_PAYLOAD_CHARS, "max_text": MAX_REJECT_TEXT_CHARS}
    sources = scopes.current().source_list()
    page = _page("rejects_page", "rejects_count", args,
                 {**key, **bounds, "source": args.get("source"), "sources": sources})
    audit.records({row["source"] for row in page["data"]}, len(page["data"]))
    return rejects_page_schema.dump(page)


@blueprint.get("/runs/<id:run_id>/quality")
@documented(path=run_path_schema, responses={200: run_quality_schema}, errors=(400, 404, 503))
def run_quality(run_id):
    """Every quality check of the run, per source: measured value, threshold, severity, verdict, the batch's score
    and what became of it (published, held, released by whom and when, superseded)."""
    auth.require_operations()
    key = run_path_schema.load({"run_id": run_id})
    load_query(no_query_schema, request.args)
    params = {**key, "sources": scopes.current().source_list()}
    batches = db.fetch_all("run_quality", params)
    if not batches and not db.fetch_one("run_exists", key)["found"]:
        raise NotFound(f"no run with run_id {key['run_id']!r}")
    checks = {}
    for row in db.fetch_all("run_quality_results", params):
        checks.setdefault(row.pop("source"), []).append({**row, "check": row.pop("check_name")})
    data = [{**batch, "at": batch.pop("recorded_at"), "checks": checks.get(batch["source"], [])} for batch in batches]
    audit.records({batch["source"] for batch in batches}, len(data))
    return run_quality_schema.dump({"run_id": key["run_id"], "data": data})
