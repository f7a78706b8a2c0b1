"""Whole runs of etl_pipeline (dag.test, real PostgreSQL, HTTP on 127.0.0.1): upsert's asset events in Airflow's
metadata DB, one per source whose rows changed, with its counts."""

import psycopg
import pytest

from sluice import assets
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

POSTS, ITEMS = 30, 20
CATALOG = [{"name": "posts", "kind": "api", "endpoint": "posts"},
           {"name": "items", "kind": "csv", "endpoint": "items.csv"}]


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(POSTS), page_size=25)
    server.serve_bytes("items.csv", sample_data.csv_bytes(ITEMS, bad_every=0))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def asset_events(run_id: str) -> dict[str, tuple[str, str, dict]]:
    """The asset events the run's tasks emitted, by asset name: (URI, emitting task, extra)."""
    found = all_asset_events(run_id)
    assert len(found) == len({name for name, *_ in found}), found
    return {name: rest for name, *rest in found}


def all_asset_events(run_id: str) -> list[tuple[str, str, str, dict]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run_id)
                                .order_by(AssetEvent.id)).all()
        return [(event.asset.name, event.asset.uri, event.source_task_id, event.extra) for event in found]


def expected_uri(database_url: str, source: str) -> str:
    with psycopg.connect(database_url) as conn:
        location = assets.Warehouse(conn.info.host, conn.info.port, conn.info.dbname)
    return assets.uri(location, source)


def test_a_first_run_emits_an_event_per_source_with_its_counts_and_a_rerun_that_changes_nothing_none(pipeline):
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "success", run["error_message"]

    events = asset_events(run["run_id"])
    assert set(events) == {"sluice.normalized_data.posts", "sluice.normalized_data.items"}
    for source, rows in (("posts", POSTS), ("items", ITEMS)):
        uri, task_id, extra = events[assets.name(source)]
        assert uri == expected_uri(pipeline.database_url, source)
        assert task_id == "upsert"
        assert extra["source"] == source and extra["run_id"] == run["run_id"]
        assert (extra["inserted"], extra["updated"]) == (rows, 0)
        # the same counts as the run's etl_runs row
        assert extra["inserted"] == run["source_counts"][source]["inserted"]

    state, rerun = pipeline.run({"sources": CATALOG})
    assert state == "success" and rerun["inserted"] + rerun["updated"] == 0
    assert asset_events(rerun["run_id"]) == {}


def test_a_source_whose_ingest_fails_emits_nothing_while_the_other_emits(pipeline):
    pipeline.sources.add_faults("posts", *[Fault(status=500, body=b"boom")] * 10)
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "failed" and "posts" in run["error_message"]

    events = asset_events(run["run_id"])
    assert set(events) == {"sluice.normalized_data.items"}
    assert events["sluice.normalized_data.items"][2]["inserted"] == ITEMS


def test_an_upsert_that_fails_after_committing_one_source_emits_both_on_its_retry(pipeline):
    """items' upsert fails once while posts' lane commits beside it; the retry writes items' rows, and the run
    emits both sources' events (the failed try emitted nothing: events go with success)."""
    # the first insert of an items row fails, once, whichever lane upserts first (a sequence is not rolled back
    # with the failed transaction; waiting for posts' rows made the failure depend on the lanes' order)
    with psycopg.connect(pipeline.database_url) as conn:
        conn.execute("""
            create sequence items_fail_once;
            create function fail_items_once() returns trigger language plpgsql as $$
            begin
                if new.source = 'items' and nextval('items_fail_once') = 1 then
                    raise exception 'items: injected failure';
                end if;
                return new;
            end $$;
            create trigger fail_items_once before insert on normalized_data
                for each row execute function fail_items_once()""")
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "success", run["error_message"]
    # the first try failed on items
    assert pipeline.value("select last_value from items_fail_once") > 1

    events = asset_events(run["run_id"])
    assert {name: extra["inserted"] for name, (_, _, extra) in events.items()} == {
        "sluice.normalized_data.posts": POSTS, "sluice.normalized_data.items": ITEMS}


def test_a_run_that_only_deletes_emits_the_deletes_and_a_refused_source_emits_nothing(pipeline):
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "success", run["error_message"]

    # two rows gone from the CSV: its only change is two soft deletes
    pipeline.sources.serve_bytes("items.csv", sample_data.csv_bytes(ITEMS - 2, bad_every=0))
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "success", run["error_message"]
    _, _, extra = asset_events(run["run_id"])["sluice.normalized_data.items"]
    assert (extra["inserted"], extra["updated"], extra["deleted"]) == (0, 0, 2)
    assert set(asset_events(run["run_id"])) == {"sluice.normalized_data.items"}

    # emptied: the guard refuses the whole load of items, which emits nothing; posts still changes and emits
    pipeline.sources.serve_bytes("items.csv", sample_data.csv_bytes(0, bad_every=0))
    pipeline.sources.serve_json("posts", sample_data.posts(POSTS + 1), page_size=25)
    state, run = pipeline.run({"sources": CATALOG})
    assert state == "failed" and "SLUICE_MAX_DELETE_FRACTION" in run["error_message"]
    assert set(asset_events(run["run_id"])) == {"sluice.normalized_data.posts"}
