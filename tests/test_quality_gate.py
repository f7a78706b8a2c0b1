"""The quality gate through sluice.pipeline's steps (no Airflow), real PostgreSQL, a source on 127.0.0.1: an error
check holds the batch and writes nothing of it, a later batch supersedes the held one (whose release is then
refused), and batch measures come from the staged batch and the merge."""

import psycopg
import pytest
import requests

from sluice import pipeline, settings, sources
from sluice.errors import QualityHeld, ReleaseRefused
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.test_pipeline import run_lane

CHECKS = [{"check": "row_count", "min": 50}, {"check": "null_rate", "field": "description", "max": 0.1,
                                               "severity": "warn"},
          {"check": "changed_rate", "max": 0.5}]


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
        status, by = conn.execute("select status, superseded_by from quality_runs where run_id = 'run-held'"
                                  ).fetchone()
        assert (status, by) == ("superseded", "run-later")
        with pytest.raises(ReleaseRefused, match="run run-later's fetch superseded it"):
            pipeline.release(conn, "posts", "run-held", released_by="alice", settings=config)
        with pytest.raises(ReleaseRefused, match="it was published"):
            pipeline.release(conn, "posts", "run-later", released_by="alice", settings=config)
