"""GET /health: 200 only when the database answers and the newest ETL run succeeded recently enough."""

import pytest
from webapp_fixtures import insert_run, make_app  # noqa: F401


@pytest.mark.parametrize("runs, config, status, code, reason", [
    ([], {}, "degraded", 503, "no ETL runs yet"),
    ([("r1", "success", 1)], {}, "ok", 200, None),
    ([("r1", "success", 25.5)], {}, "ok", 200, None),
    ([("r1", "success", 30)], {}, "degraded", 503,
     "last ETL run r1 ended 30.0 hours ago, more than SLUICE_MAX_STALENESS_HOURS=26"),
    ([("r1", "success", 30)], {"MAX_STALENESS_HOURS": 48}, "ok", 200, None),
    ([("r1", "success", 3)], {"MAX_STALENESS_HOURS": "2.5"}, "degraded", 503,
     "last ETL run r1 ended 3.0 hours ago, more than SLUICE_MAX_STALENESS_HOURS=2.5"),
    ([("r1", "success", 5), ("r2", "failed", 1)], {}, "degraded", 503, "last ETL run r2 failed"),
    ([("r1", "failed", 5), ("r2", "success", 1)], {}, "ok", 200, None),
])
def test_health(make_app, database_url, runs, config, status, code, reason):
    for run_id, run_status, hours_ago in runs:
        insert_run(database_url, run_id, status=run_status, ended_hours_ago=hours_ago)
    response = make_app(database_url, **config).test_client().get("/health")
    assert response.status_code == code
    body = response.json
    assert (body["status"], body["reason"], body["db_connected"]) == (status, reason, True)
    if runs:
        newest = runs[-1]
        assert body["etl_status"] == newest[1]
        assert body["last_etl_run"]["run_id"] == newest[0]
        assert set(body["last_etl_run"]) == {"run_id", "started_at", "ended_at"}
    else:
        assert body["etl_status"] is None and body["last_etl_run"] is None


def test_health_staleness_from_the_environment(make_app, database_url, monkeypatch):
    insert_run(database_url, "r1", ended_hours_ago=30)
    monkeypatch.setenv("SLUICE_MAX_STALENESS_HOURS", "31")
    assert make_app(database_url).test_client().get("/health").status_code == 200
