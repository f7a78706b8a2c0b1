"""A client generated from the served /openapi.json works with no special arguments (issue #12).

openapi-python-client builds a typed client from the document, as an outside user would; the test pages the
whole of /data by next_cursor, searches, reads one record and /stats through it, against gunicorn on
127.0.0.1 over a real PostgreSQL. The generator lives in a private venv under .sluice/ (made once from
tests/generated_client/requirements.txt, like the bench's): its dependencies would clash with Airflow's pins.
The generated code needs only httpx, attrs and python-dateutil, so it runs in the project venv.
"""

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from auth_fixtures import create_key
from test_security import serve_with_gunicorn
from webapp_fixtures import catalog, insert_checkpoint, insert_records, insert_run, newest_first, record

from webapp import create_app, db

REPO = Path(__file__).resolve().parents[1]
GENERATOR_DIR = Path(__file__).resolve().parent / "generated_client"
REQUIREMENTS = GENERATOR_DIR / "requirements.txt"
GENERATOR_VENV = REPO / ".sluice" / "venv-openapi-python-client"
RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"
TAGS = {"/": "meta", "/openapi.json": "meta", "/health": "meta", "/data": "data",
        "/data/{source}/{source_id}": "data", "/runs": "runs", "/runs/{run_id}/rejects": "runs", "/stats": "runs",
        "/sources": "data",
        "/sources/{source}/fields": "data", "/metrics": "meta", "/export/{source}": "data",
        "/runs/{run_id}/quality": "runs"}


@pytest.fixture(scope="module")
def document(make_database):
    app = create_app({"AUTH": "none", "DATABASE_URL": make_database(), "POOL_MIN": 0})
    yield app.test_client().get("/openapi.json").json
    db.warehouse(app).close()


def test_every_operation_is_tagged_data_runs_or_meta(document):
    tags = {path: [operation["tags"] for operation in item.values()] for path, item in document["paths"].items()}
    assert tags == {path: [[tag]] for path, tag in TAGS.items()}
    assert [tag["name"] for tag in document["tags"]] == ["data", "runs", "meta"]


def test_every_operation_documents_the_json_414(document):
    for path, item in document["paths"].items():
        response = item["get"]["responses"]["414"]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, path


def test_data_declares_no_page_default_a_client_would_send_with_its_cursor(document):
    parameters = {p["name"]: p for p in document["paths"]["/data"]["get"]["parameters"]}
    assert "default" not in parameters["page"]["schema"]
    assert parameters["page_size"]["schema"]["default"] == 10  # a default that holds with a cursor too


def generator() -> Path:
    """openapi-python-client from the private venv, installed from the pinned requirements on first use."""
    fingerprint = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = GENERATOR_VENV / ".installed"
    executable = GENERATOR_VENV / "bin" / "openapi-python-client"
    if not (marker.exists() and marker.read_text() == fingerprint and executable.exists()):
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(GENERATOR_VENV)], check=True, capture_output=True)
        subprocess.run([str(GENERATOR_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True, capture_output=True)
        marker.write_text(fingerprint)
    return executable


def generate_client(url: str, into: Path):
    """The package openapi-python-client generates from the document at url, imported."""
    done = subprocess.run([str(generator()), "generate", "--url", url, "--meta", "none", "--fail-on-warning",
                           "--config", str(GENERATOR_DIR / "config.yaml"),
                           "--output-path", str(into / "sluice_client")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module("sluice_client")
    finally:
        sys.path.remove(str(into))


@pytest.fixture(scope="module")
def warehouse(make_database):
    url = make_database()
    rows = insert_records(url, catalog(25) + [record(source="csv", source_id="needle", name="Haystack needle")]
                          + [record(source="orders", source_id=f"order-{number}") for number in range(3)])
    insert_run(url, RUN_ID, source_counts={"api": {"fetched": 13, "inserted": 13},
                                           "csv": {"fetched": 13, "inserted": 13}})
    insert_checkpoint(url, "api", 13)
    insert_checkpoint(url, "csv", 13)
    return url, rows


@pytest.fixture(scope="module")
def client(warehouse, tmp_path_factory):
    """The generated client authenticating with an API key, against gunicorn with SLUICE_AUTH=keys."""
    admin = create_app({"AUTH": "keys", "DATABASE_URL": warehouse[0], "POOL_MIN": 0})
    key = create_key(admin, "generated-client", "*", "--operations")
    with serve_with_gunicorn(warehouse[0], SLUICE_AUTH="keys") as port:
        base = f"http://127.0.0.1:{port}"
        package = generate_client(f"{base}/openapi.json", tmp_path_factory.mktemp("generated"))
        with package.Client(base_url=base, raise_on_unexpected_status=True) as anonymous:
            refused = api("runs.show_stats").sync(client=anonymous)  # a documented 401: the Error model
            assert (type(refused).__name__, refused.code) == ("Error", 401), refused
        with package.AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True) as client:
            yield client


def api(name: str):
    """The generated module of one operation, e.g. api("data.list_records")."""
    return importlib.import_module(f"sluice_client.api.{name}")


@pytest.mark.slow
def test_a_generated_client_pages_the_whole_table_by_cursor(client, warehouse):
    list_records = api("data.list_records")
    seen, cursor, pages = [], None, 0
    while True:
        # nothing but the cursor: the generated defaults must be ones the server accepts with it
        page = list_records.sync(client=client) if cursor is None else list_records.sync(client=client, cursor=cursor)
        assert type(page).__name__ == "DataPage", page  # not the Error model of a 400
        seen += [row.id for row in page.data]
        pages += 1
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert seen == [row["id"] for row in newest_first(warehouse[1])]
    assert pages == 3  # 29 rows, 10 a page
    with psycopg.connect(warehouse[0]) as conn:
        assert len(seen) == conn.execute("select count(*) from normalized_data").fetchone()[0]


@pytest.mark.slow
def test_a_generated_client_searches_and_reads_a_record(client):
    found = api("data.list_records").sync(client=client, search="NEEDLE")
    assert (found.total, [row.source_id for row in found.data]) == (1, ["needle"])
    detail = api("data.get_record").sync(client=client, source="csv", source_id="needle")
    assert (detail.source_id, detail.name, detail.first_seen_run_id) == ("needle", "Haystack needle", "run-1")


@pytest.mark.slow
def test_a_generated_client_reads_stats(client):
    stats = api("runs.show_stats").sync(client=client)
    assert stats.rows_per_source.to_dict() == {"api": 13, "csv": 13, "orders": 3}
    assert stats.last_run.run_id == RUN_ID and stats.run_count == 1


@pytest.mark.slow
def test_a_generated_client_parses_records_and_sources_of_any_name(client):
    page = api("data.list_records").sync(client=client, source="orders")
    assert type(page).__name__ == "DataPage", page
    assert sorted((row.source, row.source_id) for row in page.data) == [("orders", f"order-{n}") for n in range(3)]
    detail = api("data.get_record").sync(client=client, source="orders", source_id="order-1")
    assert (detail.source, detail.source_id) == ("orders", "order-1")
    sources = api("data.list_sources").sync(client=client)
    assert [(source.name, source.row_count) for source in sources.data] == [("api", 13), ("csv", 13), ("orders", 3)]
