"""The quality gate through sluice.pipeline's steps (no Airflow), real PostgreSQL, a source on 127.0.0.1: an error
check holds the batch and writes nothing of it, a later batch supersedes the held one (whose release is then
refused), batch measures come from the staged batch and the merge, a row-level warn check counts and loads, unique
reads the whole source, and a field's type mix drifting is an anomaly."""

import logging

import psycopg
import pytest
import requests

from sluice import pipeline, release, settings, sources
from sluice.errors import DeleteRefused, InvalidSource, QualityHeld, ReleaseRefused
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.test_pipeline import run_lane
from tests.webapp_fixtures import make_app  # noqa: F401 (a fixture)

CHECKS = [{"check": "row_count", "min": 50}, {"check": "null_rate", "field": "description", "max": 0.1,
                                               "severity": "warn"},
          {"check": "changed_rate", "max": 0.5}]
POSTS_ROWS = ("select source_id, name, value, description from normalized_data where source = 'posts' "
              "order by source_id::integer")


def lane(url, server, tmp_path, source, run_id, config):
    with psycopg.connect(url) as conn, requests.Session() as session:
        ingested = pipeline.ingest(conn, source, session, f"{server.url}/posts", str(tmp_path / f"{run_id}.copy"),
                                   run_id=run_id, settings=config)
    return run_lane(url, source, ingested, config, run_id=run_id)


def results(url: str, run_id: str) -> dict:
    with psycopg.connect(url) as conn:
        return {name: (measured, verdict) for name, measured, verdict in conn.execute(
            "select check_name, measured, verdict from quality_results where run_id = %s", (run_id,))}


def test_a_held_batch_writes_nothing_and_a_later_batch_supersedes_it(database_url, tmp_path):
    config = settings.load()
    (source,) = sources.catalog({"sources": [{"name": "posts", "kind": "api", "endpoint": "posts",
                                              "checks": CHECKS}]})
    posts = sample_data.posts(60)
    for post in posts[:10]:
        post["body"] = None
    with SourceServer() as server, psycopg.connect(database_url) as conn:
        pipeline.init_schema(conn, settings=config)
        server.serve_json("posts", posts[:40], page_size=25)
        with pytest.raises(QualityHeld, match=r"posts: the quality gate held the batch back: row_count 40 "
                                              r"\(threshold >= 50\)"):
            lane(database_url, server, tmp_path, source, "run-held", config)
        assert conn.execute("select count(*) from normalized_data where source = 'posts'").fetchone() == (0,)
        assert results(database_url, "run-held")["row_count"] == (40, "fail")

        server.serve_json("posts", posts, page_size=25)
        lane(database_url, server, tmp_path, source, "run-later", config)
        assert conn.execute("select count(*) from normalized_data where source = 'posts'").fetchone() == (60,)
        later = results(database_url, "run-later")
        # a warn check fails and the batch loads; the null rate is measured over the staged batch
        assert later["null_rate:description"] == (pytest.approx(10 / 60), "fail")
        assert later["row_count"] == (60, "pass") and later["changed_rate"] == (0, "pass")
        assert later["anomaly:row_count"] == (60, "no_history")
        # a rerun whose records normalize skips as unchanged measures them by their published rows: the same rate
        posts[10]["body"] = None
        lane(database_url, server, tmp_path, source, "run-again", config)
        assert results(database_url, "run-again")["null_rate:description"] == (pytest.approx(11 / 60), "fail")
        status, by = conn.execute("select status, superseded_by from quality_runs where run_id = 'run-held'"
                                  ).fetchone()
        assert (status, by) == ("superseded", "run-later")
        with pytest.raises(ReleaseRefused, match="run run-later's fetch superseded it"):
            pipeline.release(conn, "posts", "run-held", released_by="alice", settings=config)
        with pytest.raises(ReleaseRefused, match="it was published"):
            pipeline.release(conn, "posts", "run-later", released_by="alice", settings=config)


def test_a_changed_declaration_does_not_publish_what_a_held_fetch_stored_in_raw(database_url, tmp_path):
    """A held fetch's payloads are in the raw table (store_raw commits before the gate): a later run whose changed
    declaration re-normalizes the stored records it did not fetch must leave those rows as they were published,
    but re-normalize a payload a later fetch brought again (and so published), though it wrote no raw row."""
    config = settings.load()
    entry = {"name": "posts", "kind": "api", "endpoint": "posts", "checks": [{"check": "row_count", "min": 50}],
             "anomalies": False}
    (source,) = sources.catalog({"sources": [entry]})
    (redeclared,) = sources.catalog({"sources": [{**entry, "fields": {"user": {"from": "userId",
                                                                                "type": "integer"}}}]})
    posts = sample_data.posts(100)
    with SourceServer() as server, psycopg.connect(database_url) as conn:
        pipeline.init_schema(conn, settings=config)
        server.serve_json("posts", posts[:60], page_size=25)
        lane(database_url, server, tmp_path, source, "run-published", config)
        published = conn.execute(POSTS_ROWS).fetchall()
        # 40 records changed and one new one: too few rows, held; their payloads reach the raw table all the same
        server.serve_json("posts", [{**post, "title": f"held {post['id']}"} for post in posts[:40]]
                          + [{**posts[99], "title": "held 100"}], page_size=25)
        with pytest.raises(QualityHeld):
            lane(database_url, server, tmp_path, source, "run-held", config)
        # a later fetch brings record 1 exactly as the held one had it (its raw payload unchanged): it publishes it
        server.serve_json("posts", [{**posts[0], "title": "held 1"}, *posts[40:99]], page_size=25)
        lane(database_url, server, tmp_path, source, "run-fetched-again", config)
        # the next fetch lacks the held records, and the declaration changed: stored records are normalized again
        server.serve_json("posts", posts[40:99], page_size=25)
        _, normalized, upserted, _ = lane(database_url, server, tmp_path, redeclared, "run-redeclared", config)
        after = conn.execute(POSTS_ROWS).fetchall()
        users = dict(conn.execute("select source_id, attributes->>'user' from normalized_data "
                                  "where source = 'posts'").fetchall())
    assert (normalized.renormalized, upserted.renormalized_updated) == (1, 1)  # record 1 alone
    assert [row[1] for row in after if row[1].startswith("held")] == ["held 1"], "a held payload was published"
    assert [row for row in after if 1 < int(row[0]) <= 60] == published[1:]
    assert "100" not in users  # the record only the held fetch had is not published
    # re-normalized rows carry the new field; the held records' rows keep what was published
    assert users["41"] == str(posts[40]["userId"]) and users["1"] == str(posts[0]["userId"]) and users["2"] is None


def test_the_delete_guard_s_judgement_is_recorded_with_the_quality_results(database_url, tmp_path,
                                                                           make_app):  # noqa: F811
    """A whole read's deletes are the check `deletes` (share of live rows, the guard's limit, verdict): passed when
    the guard lets the read delete, failed and the batch `refused` when it does not (DeleteRefused, as ever, and
    nothing of the batch published); a release of a refused batch is refused."""
    config = settings.load()
    (source,) = sources.catalog({"sources": [{"name": "posts", "kind": "api", "endpoint": "posts",
                                              "delete_missing": True, "anomalies": False}]})
    posts = sample_data.posts(60)
    with SourceServer() as server, psycopg.connect(database_url) as conn:
        pipeline.init_schema(conn, settings=config)
        server.serve_json("posts", posts, page_size=25)
        lane(database_url, server, tmp_path, source, "run-first", config)
        server.serve_json("posts", posts[:59], page_size=25)
        lane(database_url, server, tmp_path, source, "run-one-gone", config)
        server.serve_json("posts", posts[:20], page_size=25)
        with pytest.raises(DeleteRefused, match="posts: the read would delete 39 of 59 live rows"):
            lane(database_url, server, tmp_path, source, "run-refused", config)
        (live,) = conn.execute("select count(*) from normalized_data where source = 'posts' and deleted_at is null"
                               ).fetchone()
        with pytest.raises(ReleaseRefused, match="the delete guard refused it"):
            pipeline.release(conn, "posts", "run-refused", released_by="alice", settings=config)
    assert live == 59
    assert "deletes" not in results(database_url, "run-first")  # nothing live before: the guard did not judge
    assert results(database_url, "run-one-gone")["deletes"] == (pytest.approx(1 / 60), "pass")

    client = make_app(database_url).test_client()
    (batch,) = client.get("/runs/run-refused/quality").json["data"]
    checks = {check["check"]: check for check in batch["checks"]}
    assert batch["status"] == "refused" and batch["score"] < 100
    assert (checks["deletes"]["measured"], checks["deletes"]["threshold"], checks["deletes"]["verdict"]) == (
        pytest.approx(39 / 59), "<= 0.5 (SLUICE_MAX_DELETE_FRACTION)", "fail")
    (shown,) = [item["quality"] for item in client.get("/sources").json["data"] if item["name"] == "posts"]
    assert (shown["run_id"], shown["status"]) == ("run-refused", "refused")
    assert [check["check"] for check in shown["failing"]] == ["deletes"]


@pytest.mark.parametrize("value, found", [
    ({}, None), (None, None), ({"source": "posts", "run_id": "manual__1"}, ("posts", "manual__1")),
    ({"source": "posts"}, InvalidSource), ({"source": "posts", "run_id": " "}, InvalidSource),
    ("posts:manual__1", InvalidSource), ({"source": "posts", "run_id": "r", "by": "me"}, InvalidSource)])
def test_the_release_param_names_one_held_batch_or_fails_init_schema(value, found):
    if found is InvalidSource:
        with pytest.raises(InvalidSource, match=r'release must be an object like \{"source": "posts", "run_id"'):
            release.asked(value)
    else:
        assert release.asked(value) == found


def test_a_row_level_warn_check_loads_the_record_and_counts_it_on_every_run(database_url, tmp_path):
    """warn: every record loads (none quarantined), the check records how many records failed it, and the score
    falls as the README defines it; an unchanged rerun, whose records normalize skips, counts the same from their
    published rows. An error check beside it still quarantines."""
    config = settings.load()
    checks = [{"check": "range", "field": "value", "max": 3, "severity": "warn"},  # userId 4..6: posts 31..60
              {"check": "not_null", "field": "description", "severity": "warn"},
              {"check": "max_length", "field": "name", "max": 1000}]
    (source,) = sources.catalog({"sources": [{"name": "posts", "kind": "api", "endpoint": "posts", "checks": checks,
                                              "anomalies": False}]})
    posts = sample_data.posts(60)
    posts[0]["body"], posts[1]["body"] = None, "  "
    with SourceServer() as server, psycopg.connect(database_url) as conn:
        pipeline.init_schema(conn, settings=config)
        server.serve_json("posts", posts, page_size=25)
        _, first, _, _ = lane(database_url, server, tmp_path, source, "run-warned", config)
        _, again, _, _ = lane(database_url, server, tmp_path, source, "run-warned-again", config)
        (loaded,) = conn.execute("select count(*) from normalized_data where source = 'posts'").fetchone()
        (rejected,) = conn.execute("select count(*) from rejected_records where source = 'posts'").fetchone()
        scores = [conn.execute("select score from quality_runs where run_id = %s", (run,)).fetchone()[0]
                  for run in ("run-warned", "run-warned-again")]
    assert (loaded, rejected) == (60, 0)
    assert first.valid == 60 and again.skipped_unchanged == 60
    for run in ("run-warned", "run-warned-again"):
        found = results(database_url, run)
        assert found["range:value"] == (30, "fail") and found["not_null:description"] == (2, "fail")
        assert found["max_length:name"] == (0, "pass")
    # C: the error check's weight 3 of 3 + 1 + 1; R: 32 of 60 records failed a row-level check (30 + 2)
    assert scores == [round(100 * 3 / 5 * 28 / 60)] * 2


def test_unique_counts_a_value_another_live_record_of_the_source_holds(database_url, tmp_path):
    """unique within the source: a value of the batch that a live record outside it holds is a duplicate; a value
    a record of the batch gives up (it is replaced) or a deleted record held is not."""
    config = settings.load()
    entry = {"name": "posts", "kind": "api", "endpoint": "posts", "anomalies": False,
             "checks": [{"check": "unique", "field": "name", "severity": "warn"}]}
    (source,) = sources.catalog({"sources": [entry]})
    (deleting,) = sources.catalog({"sources": [{**entry, "delete_missing": True}]})
    posts = [{**post, "title": f"title {post['id']}"} for post in sample_data.posts(60)]
    with SourceServer() as server, psycopg.connect(database_url) as conn:
        pipeline.init_schema(conn, settings=config)
        server.serve_json("posts", posts, page_size=25)
        lane(database_url, server, tmp_path, source, "run-unique", config)
        # a part of the source: post 1 takes the title of post 45, which this batch does not bring; posts 2 and 3
        # swap theirs (each gives its own up); posts 5 and 6 share one within the batch
        batch = [{**post} for post in posts[:30]]
        batch[0]["title"] = "title 45"
        batch[1]["title"], batch[2]["title"] = "title 3", "title 2"
        batch[5]["title"] = "title 5"
        server.serve_json("posts", batch, page_size=25)
        lane(database_url, server, tmp_path, source, "run-part", config)
        (published,) = conn.execute("select count(*) from normalized_data where source = 'posts' and name = 'title 45'"
                                    ).fetchone()
        # a whole read without post 45: it is deleted, so post 1 alone holds its old title
        server.serve_json("posts", batch + posts[30:44] + posts[45:], page_size=25)
        lane(database_url, server, tmp_path, deleting, "run-deleted", config)
    assert results(database_url, "run-unique")["unique:name"] == (0, "pass")
    assert results(database_url, "run-part")["unique:name"] == (2, "fail")  # title 45 and title 5, once more each
    assert published == 2  # a warn check: the batch loaded
    assert results(database_url, "run-deleted")["unique:name"] == (1, "fail")  # title 5 alone


def test_the_type_mix_of_a_field_is_an_anomaly_when_it_moves_against_the_history(database_url, tmp_path, caplog):
    """Type mix: per field the shares of its values' JSON types, measured as the API reader decodes each record; a
    field whose mix moves (userId arriving as strings) is an anomaly once there are five runs of history. The
    records normalize skips are measured by a scan of the source's rows when the read brought them all, by their
    ids otherwise, with the same null rates; a deleted record brought back unchanged is among them."""
    config = settings.load()
    (source,) = sources.catalog({"sources": [{"name": "posts", "kind": "api", "endpoint": "posts",
                                              "delete_missing": True}]})
    posts = sample_data.posts(60)
    posts[59]["body"] = None
    with SourceServer() as server, psycopg.connect(database_url) as conn, \
            caplog.at_level(logging.INFO, logger="sluice.quality"):
        pipeline.init_schema(conn, settings=config)
        for number in range(6):
            # the fourth run lacks post 60 (deleted), the fifth brings it back unchanged (skipped, its row deleted)
            server.serve_json("posts", posts[:59] if number == 3 else posts, page_size=25)
            lane(database_url, server, tmp_path, source, f"run-steady-{number}", config)
        steady = results(database_url, "run-steady-5")
        returned = results(database_url, "run-steady-4")
        assert "by their ids" not in caplog.text  # every rerun's skipped records found by the scan
        # two posts missing and two new ones: the scan finds more rows than normalize skipped, the ids measure
        drifted = [{**post, "userId": str(post["userId"])} if post["id"] % 2 else post for post in posts[:58]]
        server.serve_json("posts", drifted + [{**posts[0], "id": 61}, {**posts[1], "id": 62, "body": None}],
                          page_size=25)
        lane(database_url, server, tmp_path, source, "run-drifted", config)
        (mix,) = conn.execute("select measures -> 'type_mix:value' from quality_runs where run_id = 'run-drifted'"
                              ).fetchone()
    assert steady["anomaly:type_mix:value"] == (0, "pass") and steady["anomaly:type_mix:name"] == (0, "pass")
    assert returned["anomaly:null_rate:description"] == (pytest.approx(1 / 60), "no_history")
    drifted_results = results(database_url, "run-drifted")
    assert mix == {"number": pytest.approx(31 / 60), "string": pytest.approx(29 / 60)}
    assert drifted_results["anomaly:type_mix:value"] == (pytest.approx(29 / 60), "fail")
    assert drifted_results["anomaly:type_mix:name"][1] == "pass"
    # post 62's, measured by ids
    assert drifted_results["anomaly:null_rate:description"] == (pytest.approx(1 / 60), "pass")
    assert "the scan found 31 rows for the 29 records normalize skipped" in caplog.text
