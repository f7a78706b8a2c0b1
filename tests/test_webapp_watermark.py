"""The /data watermark: polling with updated_since=<watermark of the previous answer> never misses a change,
even one whose transaction was open (waiting for the source lock, or between statements) during that poll."""

import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql
from webapp_fixtures import BASE_TIME, insert_records, make_app, record  # noqa: F401

from sluice import warehouse
from tests import crash_support as crash
from tests.test_concurrency import staged_csv
from webapp import db

RUN = "manual__watermark"
MARGIN = 1.0  # seconds the watermark keeps before the clock and the oldest open transaction (sql/functions.sql)
# a new row as the pipeline writes it: updated_at defaults to now(), the start of the writer's transaction
INSERT = """insert into normalized_data (source, source_id, name, first_seen_run_id, last_changed_run_id, input_hash)
            values (%(source)s, %(source_id)s, %(name)s, 'run-w', 'run-w', 'fixture')"""


def poll(client, **query) -> dict:
    response = client.get("/data", query_string={"page_size": 100, **query})
    assert response.status_code == 200, response.json
    return response.json


def names(body: dict) -> list[str]:
    return sorted(item["name"] for item in body["data"])


def database_now(url: str) -> datetime:
    with psycopg.connect(url) as conn:
        return conn.execute("select clock_timestamp()").fetchone()[0]


def test_a_load_waiting_for_the_source_lock_during_a_poll_is_in_the_next_poll(make_app, database_url):
    with psycopg.connect(database_url) as conn:
        warehouse.store_raw(conn, "csv", staged_csv(RUN, "fresh"), run_id=RUN, lock_timeout_seconds=5)
    crash.normalize(database_url, RUN)
    client = make_app(database_url).test_client()
    load = crash.Task(crash.upsert, database_url, RUN, 60, "csv")
    with psycopg.connect(database_url, autocommit=True) as monitor, psycopg.connect(database_url) as other_run:
        # another run holds the CSV lock: the load's transaction begins (its now() stamps the rows), then waits
        with warehouse.source_transaction(other_run, "csv", 5):
            load.start()
            crash.wait_for(lambda: crash.advisory_waiters(monitor) == 1, what="the load to wait for the lock")
            time.sleep(MARGIN + 0.5)  # the load began longer ago than the watermark's margin
            polled_at = datetime.now(timezone.utc)
            during = poll(client)
        load.join(60)
    assert load.error is None and load.result["inserted"] == 200

    assert (during["total"], during["data"]) == (0, [])
    # the bug: the time of the previous poll is later than the rows' updated_at, so they are skipped forever
    assert poll(client, updated_since=polled_at.isoformat())["total"] == 0
    after = poll(client, updated_since=during["watermark"])
    assert (after["total"], len(after["data"])) == (200, 100)


def test_a_change_committed_after_a_poll_by_a_transaction_open_during_it_is_in_the_next_poll(
        make_app, database_url):
    old, other = insert_records(database_url, [record(name="before"), record(name="untouched")])
    client = make_app(database_url).test_client()
    with psycopg.connect(database_url) as slow:  # commits when the block ends
        slow.execute("update normalized_data set name = 'after', updated_at = now() where id = %s", (old["id"],))
        slow.execute(INSERT, {"source": "csv", "source_id": "slow-1", "name": "new"})
        time.sleep(MARGIN + 0.5)
        with psycopg.connect(database_url) as quick:  # begins later, commits first (another source: the
            quick.execute(INSERT, {"source": "api", "source_id": "quick-1", "name": "quick"})  # row counter)
        during = poll(client)
    assert names(during) == ["before", "quick", "untouched"]

    # the bug: the slow writer's rows are stamped before the newest row the poll saw, so they are skipped forever
    newest_seen = max(item["updated_at"] for item in during["data"])
    assert names(poll(client, updated_since=newest_seen)) == ["quick"]
    after = poll(client, updated_since=during["watermark"])
    assert names(after) == ["after", "new", "quick"]  # quick comes again: repeats are allowed, misses are not
    assert other["id"] not in {item["id"] for item in after["data"]}


def test_a_walk_over_pages_keeps_the_watermark_of_its_first_page(make_app, database_url):
    rows = insert_records(database_url, [record(updated_at=BASE_TIME + timedelta(minutes=number))
                                         for number in range(6)])
    oldest = rows[0]
    client = make_app(database_url).test_client()
    with psycopg.connect(database_url) as writer:
        writer.execute("update normalized_data set name = 'moved', updated_at = now() where id = %s",
                       (oldest["id"],))
        first = poll(client, page_size=3)
        time.sleep(MARGIN + 0.5)  # so the second page's watermark is past the change
        writer.commit()
    second = poll(client, page_size=3, cursor=first["next_cursor"])
    # the change moved the oldest row ahead of the cursor: the walk never shows it
    walked = {item["id"] for item in first["data"] + second["data"]}
    assert oldest["id"] in {row["id"] for row in rows} - walked
    assert "moved" not in {item["name"] for item in poll(client, updated_since=second["watermark"])["data"]}
    assert [item["name"] for item in poll(client, updated_since=first["watermark"])["data"]] == ["moved"]


@pytest.mark.parametrize("query", [
    {}, {"source": "csv"}, {"search": "nothing like this"}, {"count": "none"}, {"count": "estimated"},
    {"page": 50}, {"updated_since": "2999-01-01T00:00:00Z"},
])
def test_every_data_answer_has_a_recent_iso_8601_watermark_also_in_a_header(make_app, database_url, query):
    insert_records(database_url, [record(source="csv", name="one")])
    client = make_app(database_url).test_client()
    before = database_now(database_url)
    response = client.get("/data", query_string=query)
    after = database_now(database_url)
    assert response.status_code == 200
    text = response.json["watermark"]
    watermark = datetime.fromisoformat(text)
    assert watermark.utcoffset() == timedelta(0)  # ISO 8601 with its offset
    assert response.headers["Sluice-Watermark"] == text
    # a quiet database: the clock less the margin
    assert before - timedelta(seconds=MARGIN) <= watermark <= after - timedelta(seconds=MARGIN)


def test_a_cursor_page_has_a_watermark_too(make_app, database_url):
    insert_records(database_url, [record(), record(), record()])
    client = make_app(database_url).test_client()
    first = poll(client, page_size=2)
    second = poll(client, page_size=2, cursor=first["next_cursor"])
    assert datetime.fromisoformat(first["watermark"]) <= datetime.fromisoformat(second["watermark"])


def test_an_unchanged_answer_is_a_304_that_still_carries_a_fresh_watermark(make_app, database_url):
    insert_records(database_url, [record()])
    client = make_app(database_url).test_client()
    first = client.get("/data")
    time.sleep(0.05)
    again = client.get("/data", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert datetime.fromisoformat(again.headers["Sluice-Watermark"]) > datetime.fromisoformat(first.json["watermark"])


def test_a_read_only_role_sees_the_pipelines_open_transactions_in_the_watermark(make_app, database_url):
    reader = f"sluice_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login").format(sql.Identifier(reader)))
        admin.execute(sql.SQL("grant select on normalized_data, etl_checkpoint to {}").format(sql.Identifier(reader)))
    app = make_app(psycopg.conninfo.make_conninfo(database_url, user=reader))
    try:
        with psycopg.connect(database_url) as writer:  # the schema's owner, like the pipeline
            began = writer.execute("select now()").fetchone()[0]
            time.sleep(MARGIN + 0.5)
            watermark = datetime.fromisoformat(poll(app.test_client())["watermark"])
        assert watermark <= began - timedelta(seconds=MARGIN)
    finally:
        db.warehouse(app).close()
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader)))
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(reader)))


def test_the_openapi_document_describes_the_watermark_and_its_header(make_app, database_url):
    document = make_app(database_url).test_client().get("/openapi.json").json
    page = document["components"]["schemas"]["DataPage"]
    assert page["properties"]["watermark"]["format"] == "date-time" and "watermark" in page["required"]
    assert "updated_since=<watermark>" in page["properties"]["watermark"]["description"]
    responses = document["paths"]["/data"]["get"]["responses"]
    for status in ("200", "304"):
        assert {"ETag", "Sluice-Watermark"} <= set(responses[status]["headers"]), status
