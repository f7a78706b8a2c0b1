"""Reads bounded by time through whole DAG runs (Airflow, real PostgreSQL, a real HTTP server on 127.0.0.1 that
records each request's query): a time cursor reads only what changed, a backfill fetches each interval's window
once, and a source due every other day is skipped on the off day and says so."""

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at
from webapp_fixtures import make_app  # noqa: F401

UTC = timezone.utc


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def queries(server: SourceServer, path: str) -> list[dict]:
    """The query of each request the server received for path, in order (one value per parameter)."""
    found = []
    for target, _ in server.requests:
        parts = urlsplit(target)
        if parts.path == f"/{path}":
            found.append({key: values[0] for key, values in parse_qs(parts.query).items()})
    return found


def event(number: int, at: str, title: str = "") -> dict:
    return {"id": number, "title": title or f"event {number}", "userId": number, "body": "b", "updated_at": at}


def minute(n: int) -> str:
    return f"2026-03-01T10:{n:02d}:00Z"


CURSOR = {"name": "events", "kind": "api", "endpoint": "events", "delete_missing": True,
          "cursor": {"field": "updated_at", "param": "updated_after", "lookback": "10m"}}


def test_a_time_cursor_source_reads_only_what_changed_and_the_lookback_margin_counts_as_unchanged(pipeline,
                                                                                                  make_app):  # noqa: F811
    records = [event(n, minute(n)) for n in range(1, 21)]
    route = pipeline.sources.serve_json("events", records, page_size=5,
                                        filters={"updated_after": ("updated_at", ">=")})

    state, first = pipeline.run({"sources": [CURSOR]})

    assert state == "success" and first["source_counts"]["events"]["inserted"] == 20
    # the first read has no cursor yet: it reads the source whole
    assert all("updated_after" not in query for query in queries(pipeline.sources, "events"))
    assert pipeline.value("select last_cursor from etl_checkpoint where source = 'events'") == minute(20)

    # at the source: record 5 changes, record 21 is new, the others are as they were
    records[4] = event(5, minute(30), title="event 5, renamed")
    route.records = records + [event(21, minute(31))]
    pipeline.sources.requests.clear()

    state, second = pipeline.run({"sources": [CURSOR]})

    assert state == "success"
    sent = queries(pipeline.sources, "events")
    # every page of the read asks for what came after the newest value loaded (10:20) less the lookback (10m)
    assert sent and {query["updated_after"] for query in sent} == {minute(10)}
    counts = second["source_counts"]["events"]
    # 10:10..10:20 re-read (11 records, unchanged), the changed one and the new one; a cursor read deletes nothing
    assert (counts["fetched"], counts["inserted"], counts["updated"], counts["unchanged"], counts["deleted"]) == (
        13, 1, 1, 11, 0)
    assert pipeline.value("select count(*) from normalized_data where source = 'events' and deleted_at is null") == 21
    assert pipeline.value("select name from normalized_data where source = 'events' and source_id = '5'") == \
        "event 5, renamed"
    (source,) = make_app(pipeline.database_url).test_client().get("/sources").json["data"]
    assert source["checkpoint"]["last_cursor"] == minute(31) and source["checkpoint"]["last_processed_id"] == "21"

    # a full refresh ignores the cursor: it reads the source whole, and the cursor stays
    pipeline.sources.requests.clear()
    state, _ = pipeline.run({"sources": [CURSOR], "full_refresh": True})
    assert state == "success" and all("updated_after" not in q for q in queries(pipeline.sources, "events"))
    assert pipeline.value("select last_cursor from etl_checkpoint where source = 'events'") == minute(31)


WINDOWED = {"name": "daily", "kind": "api", "endpoint": "daily",
            "window": {"start_param": "from", "end_param": "to", "format": "iso8601"}}
DAYS = [datetime(2026, 3, day, tzinfo=UTC) for day in (1, 2, 3)]


def test_a_backfill_of_three_days_in_reverse_order_fetches_each_window_once_and_loads_each_once(pipeline):
    # four records a day, at 00:00, 06:00, 12:00 and 18:00 UTC; records of 4 March are outside the backfill
    records = [{"id": day * 10 + hour // 6, "title": f"day {day} {hour}h", "userId": day, "body": "b",
                "at": datetime(2026, 3, day, hour, tzinfo=UTC).isoformat()}
               for day in (1, 2, 3, 4) for hour in (0, 6, 12, 18)]
    pipeline.sources.serve_json("daily", records, filters={"from": ("at", ">="), "to": ("at", "<")})

    # dag.test with a logical date is a manual run over the interval that ends at it, as a backfill's run is
    runs = [pipeline.run({"sources": [WINDOWED]}, logical_date=day + timedelta(days=1)) for day in reversed(DAYS)]

    assert [state for state, _ in runs] == ["success"] * 3
    windows = [(query["from"], query["to"]) for query in queries(pipeline.sources, "daily")]
    assert windows == [(day.isoformat(), (day + timedelta(days=1)).isoformat()) for day in reversed(DAYS)]
    for (_, run), day in zip(runs, reversed(DAYS)):
        assert (run["data_interval_start"], run["data_interval_end"]) == (day, day + timedelta(days=1))
        counts = run["source_counts"]["daily"]
        assert (counts["fetched"], counts["inserted"], counts["updated"], counts["deleted"]) == (4, 4, 0, 0)
    loaded = pipeline.rows("select source_id, first_seen_run_id from normalized_data where source = 'daily' "
                           "order by source_id::int")
    assert [int(source_id) for source_id, _ in loaded] == [day * 10 + n for day in (1, 2, 3) for n in range(4)]
    # each record was loaded by the run of its own day
    by_run = {run["run_id"]: day.day for (_, run), day in zip(runs, reversed(DAYS))}
    assert all(by_run[run_id] == int(source_id) // 10 for source_id, run_id in loaded)


def test_a_window_source_in_a_run_without_an_interval_is_skipped_saying_how_to_read_it(pipeline):
    pipeline.sources.serve_json("daily", [])

    state, run = pipeline.run({"sources": [WINDOWED]}, logical_date=None)

    assert state == "success" and run["status"] == "success"
    assert run["skipped"]["daily"].startswith("no data interval to read")
    assert queries(pipeline.sources, "daily") == []


EVERY_OTHER_DAY = [
    {"name": "posts", "kind": "api", "endpoint": "posts"},
    {"name": "slow", "kind": "api", "endpoint": "slow", "every": "2d"},
]


def lane_states(run_id: str) -> dict:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return {(ti.task_id, ti.map_index): str(ti.state)
                for ti in session.query(TaskInstance).filter_by(run_id=run_id)}


def test_a_source_due_every_other_day_is_skipped_on_the_off_day_and_says_so(pipeline, make_app):  # noqa: F811
    from sluice_devtools import sample_data

    pipeline.sources.serve_json("posts", sample_data.posts(5))
    pipeline.sources.serve_json("slow", sample_data.posts(3))
    conf = {"sources": EVERY_OTHER_DAY}
    client = make_app(pipeline.database_url).test_client()

    day = [datetime(2026, 3, n, tzinfo=UTC) for n in range(1, 5)]
    state, first = pipeline.run_scheduled(conf, (day[0], day[1]))
    assert state == "success" and first["skipped"] == {} and set(first["source_counts"]) == {"posts", "slow"}

    state, off = pipeline.run_scheduled(conf, (day[1], day[2]))

    assert state == "success" and off["status"] == "success" and off["error_message"] is None
    reason = ("not due: read up to 2026-03-02 00:00 UTC, every 2d; due from the run whose interval ends "
              "2026-03-04 00:00 UTC")
    assert off["skipped"] == {"slow": reason}
    # posts, with no every, is read by every run; slow is neither fetched nor failed
    assert set(off["source_counts"]) == {"posts"}
    assert len(queries(pipeline.sources, "slow")) == 1
    # in the UI: every step of slow's lane is skipped, posts' succeeded, and the run recorded
    states = lane_states(off["run_id"])
    assert {task: state for (task, index), state in states.items() if index == 1} == {
        step: "skipped" for step in ("ingest", "store_raw", "normalize", "upsert", "checkpoint")}
    assert {state for (task, index), state in states.items() if index != 1} == {"success"}
    slow = {source["name"]: source for source in client.get("/sources").json["data"]}["slow"]
    assert slow["last_skip"]["run_id"] == off["run_id"] and slow["last_skip"]["reason"] == reason
    assert slow["last_error"] is None and slow["last_success"]["run_id"] == first["run_id"]
    assert slow["checkpoint"]["read_until"] == "2026-03-02T00:00:00+00:00"
    assert client.get("/runs").json["data"][0]["skipped"] == {"slow": reason}

    state, due = pipeline.run_scheduled(conf, (day[2], day[3]))

    assert state == "success" and due["skipped"] == {} and set(due["source_counts"]) == {"posts", "slow"}
    assert len(queries(pipeline.sources, "slow")) == 2
    slow = {source["name"]: source for source in client.get("/sources").json["data"]}["slow"]
    assert slow["checkpoint"]["read_until"] == "2026-03-04T00:00:00+00:00"
    assert slow["last_success"]["run_id"] == due["run_id"]
