"""Whole runs of etl_pipeline over a catalog whose sources use the options real feeds need — a gzip, latin-1,
semicolon CSV; an API wrapping its records in `data.items` with the next URL in the body; an API paged by an
offset parameter — loaded side by side with the seed's defaults (real PostgreSQL, HTTP on 127.0.0.1)."""

import csv
import gzip
import io
import json

import pytest

from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

PARTS, WRAPPED, PAGED = 30, 23, 17
PARTS_MAPPING = {"source_id": "réf", "name": "libellé", "value": "prix", "description": "remarque"}
CATALOG = [
    {"name": "parts", "kind": "csv", "endpoint": "parts.csv.gz", "delimiter": ";", "encoding": "latin-1",
     "mapping": PARTS_MAPPING},
    {"name": "wrapped", "kind": "api", "endpoint": "wrapped",
     "records_path": "data.items", "pagination": {"type": "next_field", "field": "links.next"}},
    {"name": "paged", "kind": "api", "endpoint": "paged",
     "pagination": {"type": "offset_param", "param": "_start", "page_size": 5, "size_param": "_limit"}},
]


def parts_csv() -> bytes:
    """Latin-1 text with accents in header and values, a quoted semicolon, gzip-compressed."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(PARTS_MAPPING.values())
    writer.writerows((number, f"pièce n°{number}", f"{number}.5", f"côté {number}; à vérifier")
                     for number in range(1, PARTS + 1))
    return gzip.compress(buffer.getvalue().encode("latin-1"))


def wrapped_pages(server: SourceServer, posts: list[dict], per_page: int = 10) -> None:
    chunks = [posts[at:at + per_page] for at in range(0, len(posts), per_page)]
    for number, chunk in enumerate(chunks):
        path = "wrapped" if number == 0 else f"wrapped/{number}"
        following = f"{server.url}/wrapped/{number + 1}" if number + 1 < len(chunks) else None
        body = {"links": {"next": following}, "data": {"total": len(posts), "items": chunk}}
        server.serve_bytes(path, json.dumps(body).encode(), content_type="application/json")


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("paged", sample_data.posts(PAGED, seed=3))
    server.serve_bytes("parts.csv.gz", parts_csv(), content_type="application/gzip")
    wrapped_pages(server, sample_data.posts(WRAPPED, seed=5))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def test_sources_with_options_load_side_by_side_and_a_rerun_writes_nothing(pipeline):
    state, run = pipeline.run({"sources": CATALOG})

    assert state == "success" and run["status"] == "success", run["error_message"]
    assert dict(pipeline.rows("select source, count(*) from normalized_data group by source")) == {
        "parts": PARTS, "wrapped": WRAPPED, "paged": PAGED}
    # decoded from latin-1, the quoted delimiter kept inside its field
    assert pipeline.rows("select name, value, description from normalized_data "
                         "where source = 'parts' and source_id = '7'") == [("pièce n°7", 7.5, "côté 7; à vérifier")]
    assert pipeline.value("select name from normalized_data where source = 'wrapped' and source_id = '23'") == \
        sample_data.posts(WRAPPED, seed=5)[22]["title"]
    # 4 pages of 5, the last short: no request past it
    paged = [path for path, _ in pipeline.sources.requests if path.startswith("/paged")]
    assert paged == [f"/paged?_start={n}&_limit=5" for n in (0, 5, 10, 15)]
    assert pipeline.value("select count(*) from rejected_records") == 0
    checksum = pipeline.checksum()

    state, rerun = pipeline.run({"sources": CATALOG})

    assert state == "success"
    assert pipeline.checksum() == checksum
    assert {name: (c["fetched"], c["inserted"], c["updated"], c["unchanged"])
            for name, c in rerun["source_counts"].items()} == {
        "parts": (PARTS, 0, 0, PARTS), "wrapped": (WRAPPED, 0, 0, WRAPPED), "paged": (PAGED, 0, 0, PAGED)}
