"""Deletes that are seen (issue 14): a whole read of a source soft-deletes the rows whose records it no longer
contains, a record that comes back is undeleted, the read API hides deleted rows unless include_deleted=true,
and a read that would delete too much is refused. Whole runs of etl_pipeline (real PostgreSQL, HTTP on 127.0.0.1),
and the steps of sluice.pipeline interleaved between two runs."""

import csv
import io
import json
from dataclasses import replace
from datetime import datetime, timezone

import psycopg
import pytest
import requests
from webapp_fixtures import make_app  # noqa: F401

from sluice import pipeline, results, rules, runs, settings, sources, warehouse
from sluice.errors import DeleteRefused, InvalidSource
from sluice.failures import Failure
from sluice.staging import StageWriter
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

ITEMS = [{"name": "items", "kind": "csv", "endpoint": "items.csv"}]
POSTS = {"name": "posts", "kind": "api", "endpoint": "posts"}
STOCK = {"name": "stock", "kind": "csv", "endpoint": "stock.csv"}
GUARD_ERROR = ("items: the read would delete {n} of 10 live rows ({pct}%), more than SLUICE_MAX_DELETE_FRACTION "
               "0.5; nothing was deleted and nothing of the source was loaded. If the source really shrank, trigger "
               "a run with accept_deletes {{\"items\": {share}}} to accept it (airflow dags trigger etl_pipeline -c "
               "'{{\"accept_deletes\": {{\"items\": {share}}}}}'), or raise its max_delete_fraction in the catalog")


def items_csv(ids, *, bad: dict | None = None) -> bytes:
    """A CSV of the rows with these ids (the same content for an id each time); `bad` replaces a row's value."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("id", "name", "value", "description"))
    writer.writerows((number, f"item {number}", (bad or {}).get(number, number * 1.5), f"about {number}")
                     for number in ids)
    return buffer.getvalue().encode()


@pytest.fixture
def pipeline_run(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_bytes("items.csv", items_csv(range(1, 11)))
    server.serve_bytes("stock.csv", items_csv(range(1, 6)))
    server.serve_json("posts", sample_data.posts(10), page_size=4)
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def live(pipeline, source: str) -> list[int]:
    return [int(i) for (i,) in pipeline.rows(
        "select source_id from normalized_data where source = %s and deleted_at is null order by source_id::int",
        (source,))]


def deleted(pipeline, source: str) -> dict[int, str]:
    return {int(i): run for i, run in pipeline.rows(
        "select source_id, deleted_run_id from normalized_data where source = %s and deleted_at is not null",
        (source,))}


def ids(body: dict) -> list[int]:
    return sorted(int(row["source_id"]) for row in body["data"])


def test_a_csv_losing_two_rows_soft_deletes_them_the_api_hides_them_and_they_come_back(pipeline_run, make_app):
    pipeline = pipeline_run
    _, first = pipeline.run({"sources": ITEMS})
    client = make_app(pipeline.database_url).test_client()
    watermark = client.get("/data").json["watermark"]
    pipeline.sources.serve_bytes("items.csv", items_csv([1, 2, 4, 5, 6, 8, 9, 10]))

    state, run = pipeline.run({"sources": ITEMS})

    assert state == "success" and run["status"] == "success", run["error_message"]
    counts = run["source_counts"]["items"]
    assert (counts["deleted"], counts["undeleted"], counts["live_before"], counts["live_after"]) == (2, 0, 10, 8)
    assert deleted(pipeline, "items") == {3: run["run_id"], 7: run["run_id"]}
    assert live(pipeline, "items") == [1, 2, 4, 5, 6, 8, 9, 10]
    # the read API: hidden by default, shown with include_deleted=true, counted
    page = client.get("/data?source=items&page_size=100").json
    assert ids(page) == [1, 2, 4, 5, 6, 8, 9, 10] and page["total"] == 8
    assert client.get("/data?source=items&count=exact&search=item").json["total"] == 8
    every = client.get("/data?source=items&page_size=100&include_deleted=true").json
    assert ids(every) == list(range(1, 11)) and every["total"] == 10
    assert {int(row["source_id"]) for row in every["data"] if row["deleted_at"]} == {3, 7}
    assert client.get("/data/items/3").status_code == 404
    tombstone = client.get("/data/items/3?include_deleted=true").json
    assert tombstone["deleted_at"] is not None and tombstone["deleted_run_id"] == run["run_id"]
    assert client.get("/data/items/4").json["deleted_at"] is None
    bad = client.get("/data?include_deleted=maybe")
    assert bad.status_code == 400 and "include_deleted" in bad.json["errors"]
    stats = client.get("/stats").json
    assert (stats["rows_per_source"], stats["deleted_per_source"], stats["deleted_total"]) == (
        {"items": 8}, {"items": 2}, 2)
    (source,) = client.get("/sources").json["data"]
    assert (source["row_count"], source["deleted_count"]) == (8, 2)
    # a client syncing by updated_since (from the watermark of its last answer, before this run) sees the
    # deletions as tombstones; rows of the first run may come again (the watermark errs early), live
    since = {"updated_since": watermark, "page_size": 100}
    synced = client.get("/data", query_string={**since, "include_deleted": "true"}).json["data"]
    assert {int(row["source_id"]) for row in synced if row["deleted_at"]} == {3, 7}
    assert {3, 7}.isdisjoint(ids(client.get("/data", query_string=since).json))

    pipeline.sources.serve_bytes("items.csv", items_csv(range(1, 11)))
    _, back = pipeline.run({"sources": ITEMS})

    counts = back["source_counts"]["items"]
    # unchanged records: normalize skipped them, and still they are live again
    assert (counts["inserted"], counts["updated"], counts["deleted"], counts["undeleted"]) == (0, 0, 0, 2)
    assert (counts["live_before"], counts["live_after"]) == (8, 10)
    assert deleted(pipeline, "items") == {} and live(pipeline, "items") == list(range(1, 11))
    assert client.get("/data/items/3").json["deleted_at"] is None
    assert client.get("/stats").json["deleted_total"] == 0
    assert first["source_counts"]["items"]["live_after"] == 10


def test_an_api_source_deletes_nothing_unless_it_says_delete_missing(pipeline_run):
    pipeline = pipeline_run
    pipeline.run({"sources": [POSTS]})
    pipeline.sources.serve_json("posts", sample_data.posts(10)[:6], page_size=4)

    _, run = pipeline.run({"sources": [POSTS]})

    assert run["source_counts"]["posts"]["deleted"] == 0 and live(pipeline, "posts") == list(range(1, 11))
    _, run = pipeline.run({"sources": [{**POSTS, "delete_missing": True}]})
    assert run["source_counts"]["posts"]["deleted"] == 4 and live(pipeline, "posts") == list(range(1, 7))


PAGED = {**POSTS, "delete_missing": True,
         "pagination": {"type": "page_param", "param": "_page", "page_size": 7, "size_param": "_limit"}}


def test_a_paged_read_that_could_be_partial_never_deletes(pipeline_run):
    pipeline = pipeline_run
    posts = sample_data.posts(10)
    pipeline.sources.serve_json("posts", posts)
    pipeline.run({"sources": [PAGED]})

    # a server that caps its page size below the one asked (6 when 7 was asked) is read to its empty page
    pipeline.sources.serve_json("posts", posts, max_page_size=6)
    state, run = pipeline.run({"sources": [PAGED]})
    assert state == "success" and run["source_counts"]["posts"]["deleted"] == 0
    assert live(pipeline, "posts") == list(range(1, 11))

    # one that repeats its last page forever fails the source, and deletes nothing
    pipeline.sources.serve_json("posts", posts[:9], repeat_last_page=True, total_count=False)
    state, run = pipeline.run({"sources": [PAGED]})
    assert state == "failed" and "page 3 repeats page 2" in run["error_message"]
    assert live(pipeline, "posts") == list(range(1, 11))

    # one whose count says 12 while an empty page comes after 9: post 10 may be gone or not; no delete
    headers = {"Content-Type": "application/json", "X-Total-Count": "12"}
    pipeline.sources.serve_json("posts", posts[:9])
    pipeline.sources.add_faults("posts", *(Fault(200, body=json.dumps(page).encode(), headers=headers)
                                           for page in (posts[:7], posts[7:9], [])))
    state, run = pipeline.run({"sources": [PAGED]})
    counts = run["source_counts"]["posts"]
    assert state == "success" and counts["deleted"] == 0 and "short of the records" in counts["deletes_skipped"]
    assert live(pipeline, "posts") == list(range(1, 11))

    # a whole read of the same 9 deletes post 10
    state, run = pipeline.run({"sources": [PAGED]})
    assert run["source_counts"]["posts"]["deleted"] == 1 and live(pipeline, "posts") == list(range(1, 10))


def test_an_incremental_api_source_deletes_only_on_a_full_refresh(pipeline_run):
    pipeline = pipeline_run
    incremental = [{**POSTS, "since_param": "id_gte", "delete_missing": True}]
    pipeline.run({"sources": incremental})
    pipeline.sources.serve_json("posts", [post for post in sample_data.posts(10) if post["id"] not in (2, 5)],
                                page_size=4)

    _, run = pipeline.run({"sources": incremental})

    assert run["source_counts"]["posts"]["deleted"] == 0 and live(pipeline, "posts") == list(range(1, 11))
    _, run = pipeline.run({"sources": incremental, "full_refresh": True})
    assert run["status"] == "success" and run["source_counts"]["posts"]["deleted"] == 2
    assert deleted(pipeline, "posts") == {2: run["run_id"], 5: run["run_id"]}


@pytest.mark.parametrize("fault", [Fault(status=500, body=b"boom"), Fault(truncate_to=60)], ids=["500", "truncated"])
def test_a_failed_read_deletes_nothing(pipeline_run, fault):
    pipeline = pipeline_run
    pipeline.run({"sources": ITEMS})
    pipeline.sources.serve_bytes("items.csv", items_csv([1, 2]))
    pipeline.sources.add_faults("items.csv", *[fault] * 10)

    state, run = pipeline.run({"sources": ITEMS})

    assert state == "failed" and "ingest[items]" in run["error_message"]
    assert live(pipeline, "items") == list(range(1, 11)) and deleted(pipeline, "items") == {}


@pytest.mark.parametrize("served, gone", [([], 10), ([1, 2, 3], 7)], ids=["emptied", "truncated"])
def test_the_guard_refuses_a_read_that_would_delete_too_much_and_the_other_sources_load(
        pipeline_run, monkeypatch, served, gone):
    pipeline = pipeline_run
    catalog = [*ITEMS, STOCK]
    _, first = pipeline.run({"sources": catalog})
    checkpoint = pipeline.rows("select last_processed_id, last_run_id, total_processed from etl_checkpoint"
                               " where source = 'items'")
    pipeline.sources.serve_bytes("items.csv", items_csv(served))
    pipeline.sources.serve_bytes("stock.csv", items_csv(range(1, 9)))

    state, run = pipeline.run({"sources": catalog})

    error = GUARD_ERROR.format(n=gone, pct=gone * 10, share=f"{gone / 10:g}")
    assert state == "failed" and run["status"] == "failed"
    assert f"upsert[items]: DeleteRefused: {error}" in run["error_message"]
    assert live(pipeline, "items") == list(range(1, 11)) and deleted(pipeline, "items") == {}
    assert run["source_counts"]["items"]["loaded"] is False
    assert pipeline.value("select last_error from etl_checkpoint where source = 'items'") == f"DeleteRefused: {error}"
    assert pipeline.value("select last_error_run_id from etl_checkpoint where source = 'items'") == run["run_id"]
    # its checkpoint stays; the other source loaded
    assert pipeline.rows("select last_processed_id, last_run_id, total_processed from etl_checkpoint"
                         " where source = 'items'") == checkpoint
    assert run["source_counts"]["stock"]["inserted"] == 3 and live(pipeline, "stock") == list(range(1, 9))
    assert pipeline.value("select last_success_run_id from etl_checkpoint where source = 'stock'") == run["run_id"]

    monkeypatch.setenv("SLUICE_MAX_DELETE_FRACTION", "1")
    state, run = pipeline.run({"sources": catalog})

    assert state == "success" and run["source_counts"]["items"]["deleted"] == gone
    assert live(pipeline, "items") == served and first["status"] == "success"


def test_a_source_s_own_max_delete_fraction_guards_it_and_accept_deletes_lets_one_run_take_the_drop(pipeline_run,
                                                                                                    make_app):
    pipeline = pipeline_run
    catalog = [{**ITEMS[0], "max_delete_fraction": 0.2}, STOCK]
    pipeline.run({"sources": catalog})
    pipeline.sources.serve_bytes("items.csv", items_csv(range(1, 8)))  # 3 of 10 gone: more than its own 0.2
    pipeline.sources.serve_bytes("stock.csv", items_csv(range(1, 4)))  # 2 of 5 gone: within the default 0.5

    state, refused = pipeline.run({"sources": catalog})

    assert state == "failed"
    assert ("upsert[items]: DeleteRefused: items: the read would delete 3 of 10 live rows (30%), more than its "
            "max_delete_fraction 0.2; nothing was deleted") in refused["error_message"]
    assert 'trigger a run with accept_deletes {"items": 0.3} to accept it' in refused["error_message"]
    assert live(pipeline, "items") == list(range(1, 11)) and live(pipeline, "stock") == [1, 2, 3]
    assert refused["accept_deletes"] is None

    # a person checked the export and accepts the drop for this one run, as the error says
    state, accepted = pipeline.run({"sources": catalog, "accept_deletes": {"items": 0.3}})

    assert state == "success", accepted["error_message"]
    assert accepted["source_counts"]["items"]["deleted"] == 3 and live(pipeline, "items") == list(range(1, 8))
    assert accepted["accept_deletes"] == {"items": 0.3}
    runs_served = make_app(pipeline.database_url).test_client().get("/runs").json["data"]
    assert [run["accept_deletes"] for run in runs_served[:2]] == [{"items": 0.3}, {}]

    # the next run is guarded by the source's own fraction again
    pipeline.sources.serve_bytes("items.csv", items_csv(range(1, 5)))
    state, again = pipeline.run({"sources": catalog})
    assert state == "failed" and "upsert[items]: DeleteRefused" in again["error_message"]


@pytest.mark.parametrize("conf, error", [
    ({"accept_deletes": {"itmes": 0.9}},
     "init_schema: InvalidSource: accept_deletes names 'itmes', not a source of this run's catalog (items): "
     "nothing would be accepted for it. Name the source as the catalog does"),
    ({"sources": [{**ITEMS[0], "max_delete_fraction": 1.5}]},
     "init_schema: InvalidSource: source 'items': max_delete_fraction must be a number from 0 to 1 (a fraction of "
     "the source's live rows), got 1.5"),
], ids=["accept_deletes-of-an-unknown-source", "max_delete_fraction-beyond-1"])
def test_a_bad_delete_limit_fails_the_run_at_once_before_anything_is_read(pipeline_run, conf, error):
    pipeline = pipeline_run

    state, run = pipeline.run({"sources": ITEMS, **conf})

    assert state == "failed" and run["error_message"] == error
    assert pipeline.sources.requests == []


def test_a_rejected_record_s_row_is_not_deleted(pipeline_run):
    pipeline = pipeline_run
    pipeline.run({"sources": ITEMS})
    # 4 is rejected by normalize (its value), 5 by store_raw (a NUL byte: quarantined with its id), 3 is gone
    pipeline.sources.serve_bytes("items.csv", items_csv([1, 2, 4, 6, 7, 8, 9, 10], bad={4: "not a number"})
                                 + b"5,item\x005,7.5,about 5\n")

    _, run = pipeline.run({"sources": ITEMS})

    counts = run["source_counts"]["items"]
    assert (counts["rejected"], counts["deleted"]) == (2, 1)
    assert deleted(pipeline, "items") == {3: run["run_id"]} and {4, 5} <= set(live(pipeline, "items"))


def test_a_read_that_quarantined_records_without_an_id_deletes_nothing_and_says_why(pipeline_run):
    pipeline = pipeline_run
    pipeline.run({"sources": ITEMS})
    without_id = items_csv([1, 2]) + b",nameless,1,no id\n"
    pipeline.sources.serve_bytes("items.csv", without_id)

    state, run = pipeline.run({"sources": ITEMS})

    assert state == "success"
    counts = run["source_counts"]["items"]
    assert counts["deleted"] == 0 and "1 records without an id" in counts["deletes_skipped"]
    assert live(pipeline, "items") == list(range(1, 11))


# ---- two runs interleaved step by step (sluice.pipeline without Airflow)

@pytest.fixture
def steps(database_url, tmp_path):
    server = SourceServer().start()
    source = sources.Source(name="items", kind="csv", conn_id="etl_csv", endpoint="items.csv",
                            mapping=settings.DEFAULT_CSV_MAPPING)
    config = replace(settings.load(), max_delete_fraction=0.5)

    class Steps:
        url = database_url

        def ingest(self, run_id: str, rows):
            server.serve_bytes("items.csv", items_csv(rows))
            with psycopg.connect(database_url) as conn, requests.Session() as session:
                return pipeline.ingest(conn, source, session, f"{server.url}/items.csv",
                                       str(tmp_path / f"{run_id}.copy"), run_id=run_id, settings=config)

        def store_and_normalize(self, run_id: str, ingested):
            with psycopg.connect(database_url) as conn:
                stored = pipeline.store_raw(conn, ingested, run_id=run_id, settings=config)
                return stored, pipeline.normalize(conn, source, stored, run_id=run_id, settings=config)

        def upsert(self, run_id: str, batch):
            stored, normalized = batch
            with psycopg.connect(database_url) as conn:
                return pipeline.upsert(conn, source, stored, normalized, run_id=run_id, settings=config)

        def run(self, run_id: str, rows):
            return self.upsert(run_id, self.store_and_normalize(run_id, self.ingest(run_id, rows)))

    yield Steps()
    server.stop()


def rows_of(url: str) -> tuple[list[int], list[int]]:
    with psycopg.connect(url) as conn:
        found = conn.execute("select source_id::int, deleted_at is null from normalized_data order by 1").fetchall()
    return [i for i, alive in found if alive], [i for i, alive in found if not alive]


def test_an_older_read_stored_after_a_newer_one_deletes_nothing(steps):
    steps.run("run-0", range(1, 11))
    older = steps.ingest("run-a", range(1, 9))  # 9 and 10 gone when A read
    newer = steps.ingest("run-b", range(1, 13))  # B read later: 9 and 10 are there, 11 and 12 new
    upserted_b = steps.upsert("run-b", steps.store_and_normalize("run-b", newer))

    upserted_a = steps.upsert("run-a", steps.store_and_normalize("run-a", older))

    assert upserted_b.inserted == 2
    # not refused: its read is simply not the one that decides
    assert (upserted_a.deleted, upserted_a.undeleted) == (0, 0)
    assert "newer fetch" in upserted_a.deletes_skipped
    assert rows_of(steps.url) == (list(range(1, 13)), [])


def test_an_older_read_upserted_after_a_newer_one_deleted_does_not_undelete(steps):
    steps.run("run-0", range(1, 11))
    older = steps.ingest("run-a", range(1, 11))  # A read everything
    newer = steps.ingest("run-b", range(1, 9))  # then 9 and 10 went, and B read
    normalized_a = steps.store_and_normalize("run-a", older)
    upserted_b = steps.upsert("run-b", steps.store_and_normalize("run-b", newer))

    upserted_a = steps.upsert("run-a", normalized_a)

    assert upserted_b.deleted == 2
    assert (upserted_a.deleted, upserted_a.undeleted) == (0, 0)
    assert rows_of(steps.url) == (list(range(1, 9)), [9, 10])


def test_a_retried_upsert_returns_its_counts_without_deleting_or_counting_twice(steps):
    steps.run("run-0", range(1, 11))
    normalized = steps.store_and_normalize("run-1", steps.ingest("run-1", [1, 2, 3, 4, 5, 6, 7, 8]))

    first = steps.upsert("run-1", normalized)
    retried = steps.upsert("run-1", normalized)

    assert first == retried and first.deleted == 2
    assert (first.live_before, first.live_after) == (10, 8)
    assert rows_of(steps.url) == (list(range(1, 9)), [9, 10])


# ---- the option, the setting and the results

def test_delete_missing_defaults_by_kind_is_checked_and_round_trips():
    csv_source, api_source = sources.from_entry(ITEMS[0]), sources.from_entry(POSTS)
    assert (csv_source.delete_missing, api_source.delete_missing) == (True, False)
    assert sources.from_entry(sources.to_entry(csv_source)) == csv_source
    explicit = sources.from_entry({**POSTS, "delete_missing": True, "since_param": "id_gte"})
    assert sources.from_entry(sources.to_entry(explicit)) == explicit
    assert (explicit.deletes_missing(full_refresh=False), explicit.deletes_missing(full_refresh=True)) == (False, True)
    with pytest.raises(InvalidSource, match=r"source 'posts': delete_missing must be true or false, got 'yes'"):
        sources.from_entry({**POSTS, "delete_missing": "yes"})


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "nan"])
def test_max_delete_fraction_must_be_between_0_and_1(monkeypatch, value):
    monkeypatch.setenv("SLUICE_MAX_DELETE_FRACTION", value)
    with pytest.raises(ValueError, match="SLUICE_MAX_DELETE_FRACTION"):
        settings.load()


def test_max_delete_fraction_defaults_to_a_half(monkeypatch):
    monkeypatch.delenv("SLUICE_MAX_DELETE_FRACTION", raising=False)
    assert settings.load().max_delete_fraction == 0.5


def test_a_refused_source_fails_the_run_by_name_and_the_others_count():
    refused = Failure.of(DeleteRefused("items: the read would delete ..."), step="upsert", source="items")
    upserted = results.Upserted("stock", inserted=3, deleted=1, undeleted=2, live_before=5, live_after=9)
    value = json.loads(json.dumps(upserted.to_xcom()))
    assert results.from_xcom(value) == upserted
    outcome = runs.RunOutcome.of(
        [results.Ingested("items", "file:///i", records=3, kind="csv"),
         results.Ingested("stock", "file:///s", records=8, kind="csv"), upserted],
        run_id="r", run_type="manual", started_at=datetime.now(timezone.utc),
        failures=[refused])
    assert outcome.status == "failed" and outcome.failed_sources == {"items": refused}
    assert outcome.source_statuses() == {"items": ("csv", refused), "stock": ("csv", None)}
    assert outcome.error_lines() == ["upsert[items]: DeleteRefused: items: the read would delete ..."]
    assert outcome.source_counts()["stock"] == {
        "fetched": 8, "inserted": 3, "updated": 0, "unchanged": 0, "rejected": 0, "superseded": 0, "deleted": 1,
        "undeleted": 2, "deletes_skipped": None, "live_before": 5, "live_after": 9, "loaded": True}


def test_a_refused_read_writes_no_row_version_so_normalized_data_does_not_grow(steps):
    steps.run("run-0", range(1, 2001))
    # the main forks of the table and its indexes: autovacuum may add visibility-map and free-space forks any time
    # (the table's own pages: dead row versions land there; its indexes may be rebuilt to another size by a bulk load)
    pages = "select pg_relation_size('normalized_data', 'main')"
    with psycopg.connect(steps.url, autocommit=True) as conn:
        # no vacuum between the two sizes: a concurrent one could move pages (and it did under a full suite's load)
        conn.execute("alter table normalized_data set (autovacuum_enabled = off, toast.autovacuum_enabled = off)")
        conn.execute("vacuum normalized_data")
        before = conn.execute(pages).fetchone()[0]

    with pytest.raises(DeleteRefused, match="items: the read would delete 1,990 of 2,000 live rows"):
        steps.run("run-1", range(1, 11))  # the source emptied but for 10 rows

    with psycopg.connect(steps.url) as conn:
        # an update of the 1,990 rows rolled back would have left 1,990 dead versions in new pages and index entries
        assert conn.execute(pages).fetchone()[0] == before
    assert rows_of(steps.url) == (list(range(1, 2001)), [])


# ---- which batch decides deletes (issue 22): the newest fetch, not the run that stored last (sluice.warehouse)

def staged_items(run_id: str, ids, names: str) -> io.BytesIO:
    out = io.BytesIO()
    writer = StageWriter(out, run_id, "items")
    for number in ids:
        record = {"id": str(number), "name": f"{names} {number}", "value": str(number), "description": "d"}
        writer.record(number, str(number), record, where=f"line {number + 1}")
    out.seek(0)
    return out


def store(conn, run_id: str, ids, fetch_seq: int, names: str = "item") -> dict:
    return warehouse.store_raw(conn, "items", staged_items(run_id, ids, names), run_id=run_id,
                               lock_timeout_seconds=5, fetch_seq=fetch_seq, kind="csv")


def normalize_and_upsert(conn, run_id: str) -> dict:
    warehouse.normalize(conn, "items", rules.Normalization(settings.DEFAULT_CSV_MAPPING), run_id=run_id,
                        full_refresh=False, lock_timeout_seconds=5)
    return warehouse.upsert(conn, "items", run_id=run_id, lock_timeout_seconds=5, deletes_missing=True, kind="csv")


NEWER_FETCH = ("another run stored a newer fetch of the source since this run's; its run decides deletes")
# run-0 loaded 1..10; run A fetched, then run B: B's read (9 and 10 gone) decides in every store order.
# (which batch stores first, A's ids, A's names, B's names, the rows deleted in the end)
STORE_ORDERS = {
    # A, older, stores last: every record it holds is superseded, it writes no raw row
    "older-stores-after-newer": ("b", range(1, 11), "item", "item", [9, 10]),
    # the same, and A holds 11, which the source did not (added and gone between the reads): A writes that raw
    # row last, and upserts before B, whose read deletes it with 9 and 10
    "older-writing-a-row-stores-after-newer": ("b", range(1, 12), "item", "item", [9, 10, 11]),
    # A stores first and renames every row; B, stored after it, finds its records unchanged and writes none
    "older-stores-first": ("a", range(1, 11), "renamed", "renamed", [9, 10]),
}


@pytest.mark.parametrize("order", STORE_ORDERS)
def test_the_newest_fetch_deletes_what_it_lacks_whichever_batch_stored_last(database_url, order):
    first, ids_a, names_a, names_b, gone = STORE_ORDERS[order]
    with psycopg.connect(database_url) as conn:
        store(conn, "run-0", range(1, 11), warehouse.next_fetch_seq(conn))
        normalize_and_upsert(conn, "run-0")
        older, newer = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        batches = {"a": ("run-a", ids_a, older, names_a), "b": ("run-b", range(1, 9), newer, names_b)}
        for run in (first, "a" if first == "b" else "b"):
            store(conn, *batches[run])
        upserted_a = normalize_and_upsert(conn, "run-a")
        upserted_b = normalize_and_upsert(conn, "run-b")

    assert (upserted_b.deleted, upserted_b.deletes_skipped) == (len(gone), "")
    assert rows_of(database_url) == (list(range(1, 9)), gone)
    # A's read is not the one that decides, and the reason it gives is true: B fetched after it
    assert (upserted_a.deleted, upserted_a.undeleted, upserted_a.deletes_skipped) == (0, 0, NEWER_FETCH)


@pytest.mark.parametrize("first", ["newer", "older"])
def test_the_older_read_upserted_last_neither_deletes_nor_undeletes(database_url, first):
    with psycopg.connect(database_url) as conn:
        store(conn, "run-0", range(1, 11), warehouse.next_fetch_seq(conn))
        normalize_and_upsert(conn, "run-0")
        older, newer = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        batches = {"older": ("run-a", range(1, 11), older), "newer": ("run-b", range(1, 9), newer)}
        for which in (first, "older" if first == "newer" else "newer"):
            store(conn, *batches[which])
        upserted_b = normalize_and_upsert(conn, "run-b")
        upserted_a = normalize_and_upsert(conn, "run-a")

    assert (upserted_b.deleted, upserted_b.deletes_skipped) == (2, "")
    assert (upserted_a.deleted, upserted_a.undeleted, upserted_a.deletes_skipped) == (0, 0, NEWER_FETCH)
    assert rows_of(database_url) == (list(range(1, 9)), [9, 10])


@pytest.mark.parametrize("written", [False, True], ids=["wrote-nothing", "wrote-a-new-record"])
def test_only_a_batch_that_wrote_raw_rows_becomes_the_raw_writer(database_url, written):
    with psycopg.connect(database_url) as conn:
        older, newer = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        store(conn, "run-b", range(1, 9), newer)
        late = store(conn, "run-a", range(1, 10 if written else 9), older)
        writer = conn.execute("select raw_run_id, raw_fetch_seq from etl_checkpoint where source = 'items'").fetchone()

    assert (late.superseded, late.raw_inserted, late.raw_updated) == (8, int(written), 0)
    # the fetch order stays the newer batch's either way
    assert writer == ("run-a" if written else "run-b", newer)
