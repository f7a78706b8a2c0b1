"""Replay from raw (the `replay` param, sluice.replay): whole DAG runs against real PostgreSQL and loopback sources
that count every request."""

import threading
import time

import psycopg
import pytest

from sluice import queries, replay
from sluice.errors import InvalidSource
from sluice_devtools import sample_data
from tests.pipeline_harness import Pipeline, point_airflow_at

API_RECORDS, CSV_ROWS, BAD_EVERY = 60, 200, 40
GONE = [f"{n}" for n in range(11, 16)]  # removed from the CSV by the second read: soft-deleted
# one source user's view of every row; the lineage columns are compared apart
DATA = ("select source, source_id, name, value, description, attributes, deleted_at is null as live "
        "from normalized_data order by source, source_id")
LINEAGE = "select source_id, first_seen_run_id, last_changed_run_id from normalized_data where source = 'csv'"
CHECKPOINTS = "select source, last_processed_id, total_processed, read_until, raw_fetch_seq from etl_checkpoint"


def csv_body(skip: tuple = ()) -> bytes:
    """A CSV whose every 40th row's value is not a number (rejected by normalize, kept in raw)."""
    lines = ["id,name,value,description"]
    for n in range(1, CSV_ROWS + 1):
        if str(n) not in skip:
            lines.append(f"{n},item {n},{'abc' if n % BAD_EVERY == 0 else n * 1.5},row {n}")
    return ("\r\n".join(lines) + "\r\n").encode()


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    from sluice_devtools.source_server import SourceServer

    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(API_RECORDS), page_size=25)
    server.serve_bytes("items.csv", csv_body())
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


@pytest.mark.slow
def test_replay_rebuilds_damaged_rows_from_raw_without_a_request_as_they_were(pipeline):
    assert pipeline.run()[0] == "success"
    pipeline.sources.serve_bytes("items.csv", csv_body(skip=tuple(GONE)))
    state, second = pipeline.run()
    assert state == "success" and second["source_counts"]["csv"]["deleted"] == len(GONE)
    before = pipeline.rows(DATA)
    lineage_before = set(pipeline.rows(LINEAGE))
    rejects_before = sorted(pipeline.rows("select source_id, reason from rejected_records where source = 'csv' "
                                          "and stage = 'normalize' and run_id = %s", (second["run_id"],)))
    checkpoints_before = sorted(pipeline.rows(CHECKPOINTS))
    assert len(rejects_before) == CSV_ROWS // BAD_EVERY

    # damage: rows lost (a live and a rejected id's neighbour), values garbled, a declared-looking attribute added
    lost = ["1", "2", "3", "41", "199"]
    garbled = ["5", "6", "7"]
    with psycopg.connect(pipeline.database_url) as conn:
        conn.execute("delete from normalized_data where source = 'csv' and source_id = any(%s)", (lost,))
        conn.execute("update normalized_data set value = -1, name = 'garbled' "
                     "where source = 'csv' and source_id = any(%s)", (garbled[:2],))
        conn.execute("update normalized_data set attributes = '{\"x\": 1}' "
                     "where source = 'csv' and source_id = %s", (garbled[2],))
    requests_before = len(pipeline.sources.requests)

    state, replayed = pipeline.run({"replay": True})

    assert state == "success"
    assert len(pipeline.sources.requests) == requests_before  # nothing fetched, from any source
    assert pipeline.rows(DATA) == before  # every value, and the soft deletes, as before the damage
    lineage = set(pipeline.rows(LINEAGE))
    untouched = {row for row in lineage_before if row[0] not in lost + garbled}
    assert untouched <= lineage  # rows that came out the same keep their lineage
    repaired = {row[0]: row for row in lineage if row[0] in lost + garbled}
    assert all(row[2] == replayed["run_id"] for row in repaired.values())  # the replay changed them
    assert all(repaired[source_id][1] == replayed["run_id"] for source_id in lost)  # and made these again
    csv, api = replayed["source_counts"]["csv"], replayed["source_counts"]["api"]
    assert (csv["fetched"], csv["inserted"], csv["updated"], csv["deleted"], csv["undeleted"]) == (0, 0, 0, 0, 0)
    assert (csv["renormalized_inserted"], csv["renormalized_updated"]) == (len(lost), len(garbled))
    assert (api["renormalized_inserted"], api["renormalized_updated"], api["fetched"]) == (0, 0, 0)
    # the replay's rejects are the last load's: the same records, the same reasons, under the replay's run
    assert sorted(pipeline.rows("select source_id, reason from rejected_records where source = 'csv' "
                                "and stage = 'normalize' and run_id = %s", (replayed["run_id"],))) == rejects_before
    # the checkpoint, the fetch order and the time bounds do not move: the next read is what it would have been
    assert sorted(pipeline.rows(CHECKPOINTS)) == checkpoints_before
    assert pipeline.value("select count(*) from normalized_stage") == 0  # its work rows are gone with the run

    state, after = pipeline.run()
    assert state == "success"
    assert (after["inserted"], after["updated"]) == (0, 0)
    assert sum(counts["deleted"] + counts["undeleted"] for counts in after["source_counts"].values()) == 0
    assert pipeline.rows(DATA) == before


# error checks the quality gate holds a batch for: a replay's batch (no row fetched) must not be judged by them
GATED = [{"name": "api", "kind": "api", "endpoint": "posts", "checks": [{"check": "row_count", "min": 1}]},
         {"name": "csv", "kind": "csv", "endpoint": "items.csv", "checks": [{"check": "row_count", "min": 1}],
          "anomalies": {"severity": "error"}}]


@pytest.mark.slow
def test_a_replay_waits_for_a_run_holding_the_source_and_is_not_held_by_the_quality_gate(pipeline, monkeypatch):
    assert pipeline.run({"sources": GATED})[0] == "success"
    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "60")
    released = {}
    locked = threading.Event()

    def hold_csv():
        with psycopg.connect(pipeline.database_url) as conn:
            conn.execute(queries.query("pipeline.sql", "lock_source"), {"source": "csv"})
            locked.set()
            time.sleep(3)
            released["at"] = conn.execute("select clock_timestamp()").fetchone()[0]
        # the transaction ends with the block: the lock goes with it

    holder = threading.Thread(target=hold_csv, daemon=True)
    holder.start()
    assert locked.wait(10)
    state, replayed = pipeline.run({"sources": GATED, "replay": ["csv"]})
    holder.join(10)
    assert state == "success", replayed["error_message"]
    assert pipeline.rows("select count(*) from quality_results where run_id = %s and source = 'csv'",
                         (replayed["run_id"],))[0][0] == 0
    # the step after the one that waited began once the lock was released
    (normalized_at,) = pipeline.rows("select created_at from etl_step_results where run_id = %s and source = 'csv' "
                                     "and step = 'normalize'", (replayed["run_id"],))[0]
    assert normalized_at > released["at"]
    # only csv is replayed: api was read as usual
    assert replayed["source_counts"]["api"]["fetched"] == API_RECORDS
    assert replayed["source_counts"]["csv"]["fetched"] == 0


@pytest.mark.parametrize("value, names, expected", [
    (None, ["a", "b"], set()),
    (False, ["a", "b"], set()),
    ([], ["a"], set()),
    (True, ["a", "b"], {"a", "b"}),
    (["b"], ["a", "b"], {"b"}),
])
def test_the_replay_param_names_sources_of_the_catalog(value, names, expected):
    assert replay.selected({"replay": value}, names) == expected


@pytest.mark.parametrize("value, message", [
    (["c"], "replay names 'c', not a source of this run's catalog (a, b)"),
    ("a", "replay must be true (every source) or a list of source names"),
    ([1], "replay must be true (every source) or a list of source names"),
])
def test_a_replay_naming_no_source_of_the_catalog_is_refused(value, message):
    with pytest.raises(InvalidSource, match=message.replace("(", r"\(").replace(")", r"\)")):
        replay.selected({"replay": value}, ["a", "b"])
