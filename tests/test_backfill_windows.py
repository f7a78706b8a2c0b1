"""Backfill windows load in any order and in parallel (pipeline steps against real PostgreSQL and a real HTTP
server on 127.0.0.1): each window's records are loaded once, and for a record two windows saw, the later fetch
wins whichever run writes last; the source's read_until is the newest interval's end."""

import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import requests

from sluice import pipeline, settings, sources
from sluice_devtools.source_server import SourceServer

UTC = timezone.utc
DAY1, DAY2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
SOURCE = sources.from_entry({"name": "daily", "kind": "api", "endpoint": "daily",
                             "window": {"start_param": "from", "end_param": "to"}})


def record(number: int, day: datetime, title: str) -> dict:
    return {"id": number, "title": title, "userId": number, "body": "b", "at": (day + timedelta(hours=6)).isoformat()}


def fetch(url: str, server: SourceServer, run_id: str, day: datetime, tmp_path):
    """The ingest of one backfill run: the window [day, day + 1 day) of the source, staged."""
    with psycopg.connect(url) as conn, requests.Session() as session:
        return pipeline.ingest(conn, SOURCE, session, f"{server.url}/daily", str(tmp_path / f"{run_id}.copy"),
                               run_id=run_id, settings=settings.load(), interval=(day, day + timedelta(days=1)))


def load(url: str, ingested, run_id: str, read_until: datetime) -> dict:
    """store_raw >> normalize >> upsert >> checkpoint of the run, each step on what the one before returned."""
    config = settings.load()
    with psycopg.connect(url) as conn:
        stored = pipeline.store_raw(conn, ingested, run_id=run_id, settings=config)
        normalized = pipeline.normalize(conn, SOURCE, stored, run_id=run_id, settings=config)
        upserted = pipeline.upsert(conn, SOURCE, stored, normalized, run_id=run_id, settings=config)
        pipeline.checkpoint(conn, stored, upserted, run_id=run_id, settings=config, read_until=read_until)
    return {"inserted": upserted.inserted, "updated": upserted.updated, "superseded": stored.superseded}


@pytest.mark.parametrize("order", ["newest window first", "in parallel"])
def test_two_windows_load_each_record_once_in_any_order_and_the_later_fetch_wins(database_url, tmp_path, order):
    with SourceServer() as server:
        route = server.serve_json("daily", [record(1, DAY1, "one"), record(7, DAY1, "seven, as first seen"),
                                            record(4, DAY2, "four")],
                                  filters={"from": ("at", ">="), "to": ("at", "<")})
        first = fetch(database_url, server, "backfill__day1", DAY1, tmp_path)
        # record 7 changes at the source, and with it moves into the second day's window
        route.records = [record(1, DAY1, "one"), record(4, DAY2, "four"), record(7, DAY2, "seven, changed")]
        second = fetch(database_url, server, "backfill__day2", DAY2, tmp_path)
        windows = sorted(request.split("?")[1] for request, _ in server.requests)
    assert windows == ["from=2026-03-01T00%3A00%3A00%2B00%3A00&to=2026-03-02T00%3A00%3A00%2B00%3A00",
                       "from=2026-03-02T00%3A00%3A00%2B00%3A00&to=2026-03-03T00%3A00%3A00%2B00%3A00"]
    assert (first.records, second.records) == (2, 2)

    runs = [(second, "backfill__day2", DAY2 + timedelta(days=1)), (first, "backfill__day1", DAY2)]
    results = {}
    if order == "in parallel":
        threads = [threading.Thread(target=lambda run=run: results.__setitem__(run[1], load(database_url, *run)))
                   for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    else:
        results = {run[1]: load(database_url, *run) for run in runs}

    with psycopg.connect(database_url) as conn:
        rows = dict(conn.execute("select source_id, name from normalized_data where source = 'daily'").fetchall())
        read_until = conn.execute("select read_until from etl_checkpoint where source = 'daily'").fetchone()[0]
    assert rows == {"1": "one", "4": "four", "7": "seven, changed"}
    # each record inserted once; the first day's older copy of 7 never replaced the later fetch's
    assert sum(result["inserted"] for result in results.values()) == 3
    assert results["backfill__day1"]["inserted"] + results["backfill__day1"]["updated"] <= 2
    assert read_until == DAY2 + timedelta(days=1)
