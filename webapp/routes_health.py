"""/health: 200 only when the database answers and the newest ETL run succeeded recently enough."""

from flask import Blueprint, current_app, request

from webapp import db, scopes
from webapp.openapi import documented
from webapp.schemas import health_schema, health_summary_schema, load_query, no_query_schema

blueprint = Blueprint("health", __name__)


def _verdict(run: dict | None, max_hours: float) -> tuple[str, str | None]:
    """("ok", None) or ("degraded", why) for the newest etl_runs row."""
    if run is None:
        return "degraded", "no ETL runs yet"
    if run["status"] != "success":
        return "degraded", f"last ETL run {run['run_id']} failed"
    if run["hours_since_end"] is None:
        return "degraded", f"last ETL run {run['run_id']} has no end time"
    hours = float(run["hours_since_end"])
    if hours > max_hours:
        return "degraded", (f"last ETL run {run['run_id']} ended {hours:.1f} hours ago, more than "
                            f"SLUICE_MAX_STALENESS_HOURS={max_hours:g}")
    return "ok", None


@blueprint.get("/health")
@documented(responses={200: (health_schema, health_summary_schema), 503: (health_schema, health_summary_schema)},
            errors=(400,), open_access=True)
def check_health():
    """Database reachable and the newest ETL run successful and fresh; 503 with the reason otherwise (to a caller
    without credentials, when the API asks for them: the status alone)."""
    load_query(no_query_schema, request.args)
    run = None
    try:
        run = db.fetch_one("last_run")
    except db.DatabaseUnavailable as error:
        current_app.logger.warning("health check: %s", error)
        status, reason, connected = "unavailable", str(error), False
    else:
        status, reason = _verdict(run, current_app.config["MAX_STALENESS_HOURS"])
        connected = True
    code = 200 if status == "ok" else 503
    if scopes.current() is scopes.ANONYMOUS:
        return health_summary_schema.dump({"status": status}), code
    body = health_schema.dump({"status": status, "db_connected": connected, "last_etl_run": run,
                               "etl_status": run["status"] if run else None, "reason": reason})
    return body, code
