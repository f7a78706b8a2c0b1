"""When a source's upsert emits an event for its asset, and what the event says (sluice.assets, Airflow-free)."""

from sluice import assets
from sluice.results import Upserted
from tests import airflow_env  # noqa: F401  # its AIRFLOW_HOME, before airflow is first imported

WAREHOUSE = assets.Warehouse(host="db.example", port=5433, database="sluice")


def test_a_source_that_changed_rows_emits_its_counts_and_the_run_id():
    found = [*assets.events(Upserted("items", inserted=0, updated=2, unchanged=1, superseded=1, processed=4),
                            WAREHOUSE, run_id="manual__1"),
             *assets.events(Upserted("orders", inserted=3, updated=0, unchanged=5, processed=8), WAREHOUSE,
                            run_id="manual__1")]
    assert [event.name for event in found] == ["sluice.normalized_data.items", "sluice.normalized_data.orders"]
    assert found[1].extra == {"source": "orders", "inserted": 3, "updated": 0, "unchanged": 5, "superseded": 0,
                              "processed": 8, "deleted": 0, "undeleted": 0, "deletes_skipped": "",
                              "live_before": 0, "live_after": 0, "renormalized_inserted": 0,
                              "renormalized_updated": 0, "quality_score": None, "run_id": "manual__1"}
    assert found[0].extra["updated"] == 2 and found[0].extra["run_id"] == "manual__1"
    assert found[1].uri == "postgres://db.example:5433/sluice/public/normalized_data?source=orders"


def test_a_source_that_did_not_change_emits_nothing():
    assert assets.events(Upserted("orders", unchanged=10, processed=10), WAREHOUSE, run_id="r") == []
    assert assets.events(Upserted("empty"), WAREHOUSE, run_id="r") == []


def test_changed_means_rows_inserted_updated_deleted_or_undeleted():
    assert assets.changed(Upserted("a", inserted=1))
    # rows a changed declaration re-normalized from raw, without a fetch
    assert assets.changed(Upserted("a", renormalized_inserted=1))
    assert assets.changed(Upserted("a", renormalized_updated=1))
    assert assets.changed(Upserted("a", updated=1))
    assert assets.changed(Upserted("a", deleted=1, unchanged=4))
    assert assets.changed(Upserted("a", undeleted=1, unchanged=4))
    assert not assets.changed(Upserted("a", unchanged=7, superseded=2, processed=9))


def test_the_uri_is_what_airflow_normalizes_it_to_and_distinct_per_source():
    """Airflow keeps one active asset per URI, so each source needs its own; the postgres provider requires
    /<database>/<schema>/<table> and keeps the query."""
    from airflow.sdk import Asset

    for location in (WAREHOUSE, assets.Warehouse(host="/tmp/pg sock", port=5432, database="my db")):
        for source in ("orders", "items"):
            uri = assets.uri(location, source)
            assert Asset(name=assets.name(source), uri=uri).uri == uri
    assert assets.uri(WAREHOUSE, "orders") != assets.uri(WAREHOUSE, "items")
    assert "%2Ftmp%2Fpg%20sock:5432/my%20db/" in assets.uri(assets.Warehouse("/tmp/pg sock", 5432, "my db"), "a")


def test_the_log_describes_an_event_in_plain_words():
    (event,) = assets.events(Upserted("items", inserted=1200, updated=3, deleted=2, processed=1205), WAREHOUSE,
                             run_id="r")
    assert assets.described(event) == "1,200 inserted, 3 updated, 2 deleted, 0 undeleted"
