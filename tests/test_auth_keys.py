"""API keys (SLUICE_AUTH=keys, the default): created, listed and revoked by `flask --app webapp keys` over the
owner's connection, stored only as a hash, checked by the API over its read-only role; a revoked or expired key is
refused within a second, and every refusal is a 401 in the one error shape with WWW-Authenticate."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from auth_fixtures import bearer, create_key, reader_role, run_keys
from test_security import request
from webapp_fixtures import catalog, free_port, insert_checkpoint, insert_records, make_app  # noqa: F401 (a fixture)

from webapp import api_keys, create_app, db

REPO = Path(__file__).resolve().parents[1]
# every route that needs a credential, and a path no route has (which must not tell the two apart)
PROTECTED = ("/data", "/data/api/item-1", "/stats", "/sources", "/sources/api/fields", "/runs", "/runs/x/rejects", "/",
             "/no-such-path")


@pytest.fixture
def warehouse(database_url):
    insert_records(database_url, catalog(6))
    insert_checkpoint(database_url, "api", 3)
    insert_checkpoint(database_url, "csv", 3)
    return database_url


@pytest.fixture
def api(make_app, warehouse):
    """The API as deployed: keys, connected as the read-only role; key management over the owner's URL."""
    with reader_role(warehouse) as reader_url:
        yield make_app(reader_url, AUTH="keys", ADMIN_DATABASE_URL=warehouse)


def test_keys_are_the_default(monkeypatch):
    monkeypatch.delenv("SLUICE_AUTH", raising=False)
    app = create_app({"DATABASE_URL": "postgresql:///x"})
    assert app.config["AUTH"] == "keys"
    assert app.test_client().get("/data").status_code == 401
    with pytest.raises(ValueError, match="SLUICE_AUTH='open' must be one of keys, oidc, none"):
        create_app({"DATABASE_URL": "postgresql:///x", "AUTH": "open"})


def test_a_key_from_creation_to_revocation(api, warehouse):
    key = create_key(api, "reporting", "api", "--expires", "90d")
    client = api.test_client()

    page = client.get("/data", headers=bearer(key))
    assert page.status_code == 200 and {row["source"] for row in page.json["data"]} == {"api"}

    with psycopg.connect(warehouse) as conn:
        stored = conn.execute("select key_hash, sources, operations, expires_at - created_at, created_by,"
                              " last_used_at is not null, row_to_json(api_keys)::text from api_keys").fetchone()
    assert stored[0] == hashlib.sha256(key.encode()).digest()
    assert (stored[1], stored[2], stored[3].days) == (["api"], False, 90)
    assert stored[4]  # the OS user who ran the command
    assert stored[5], "the API recorded the key's use through sluice_touch_api_key()"
    assert key not in stored[6] and key[7:] not in stored[6]  # nothing but the hash

    # the API's role reads the table but cannot write it, even by starting a read-write transaction itself
    with psycopg.connect(api.config["DATABASE_URL"], autocommit=True) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("start transaction read write; update api_keys set revoked_at = null; commit")

    listed = run_keys(api, "list")
    assert listed.exit_code == 0 and key not in listed.output
    assert "reporting\tapi\tno\tactive\t" in listed.output

    revoked = run_keys(api, "revoke", "reporting")
    assert revoked.exit_code == 0 and "key reporting revoked at" in revoked.output
    started = time.monotonic()
    while (answer := client.get("/data", headers=bearer(key))).status_code == 200:
        assert time.monotonic() - started < 1.2, "a revoked key was still accepted after its cache's second"
        time.sleep(0.05)
    assert answer.status_code == 401 and answer.json["message"] == "this API key was revoked"
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"].replace("error=invalid_token",
                                                                                 'error="invalid_token"')
    assert "\nreporting\tapi\tno\trevoked\t" in run_keys(api, "list").output
    assert run_keys(api, "revoke", "reporting").output.strip() == "key reporting was already revoked"


def test_an_expired_key_is_refused(api, warehouse):
    key = create_key(api, "shortlived", "*", "--expires", "1h")
    assert api.test_client().get("/data", headers=bearer(key)).status_code == 200
    with psycopg.connect(warehouse) as conn:
        conn.execute("update api_keys set expires_at = now() where name = 'shortlived'")
    time.sleep(1.05)  # past the cache's second
    answer = api.test_client().get("/data", headers=bearer(key))
    assert (answer.status_code, answer.json["message"]) == (401, "this API key has expired")


@pytest.mark.parametrize("header, message", [
    (None, "this endpoint needs a credential: send Authorization: Bearer <API key or token>"),
    ("Basic dXNlcjpwYXNz", "send the credential as Authorization: Bearer <API key or token>"),
    ("Bearer", "send the credential as Authorization: Bearer <API key or token>"),
    ("Bearer sluice_tooshort", "the bearer token is not a Sluice API key (sluice_ and 43 characters)"),
    ("Bearer sluice_" + "A" * 43, "unknown API key"),
    ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "the bearer token is not a Sluice API key (sluice_ and 43 "
                                                    "characters)"),
])
def test_every_bad_credential_is_a_401_in_the_error_shape(api, header, message):
    client = api.test_client()
    for path in PROTECTED:
        answer = client.get(path, headers={"Authorization": header} if header else {})
        assert answer.status_code == 401, path
        assert answer.json == {"code": 401, "status": "Unauthorized", "message": message, "errors": {}}, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer realm=sluice"), path
        if header and " " in header:
            assert header.split()[-1] not in answer.get_data(as_text=True)


def test_an_expired_and_a_revoked_key_are_refused_on_every_route(api, warehouse):
    expired, revoked = create_key(api, "expired", "*", "--operations", "--expires", "1h"), create_key(
        api, "revoked", "*", "--operations")
    client = api.test_client()
    assert [client.get("/runs", headers=bearer(key)).status_code for key in (expired, revoked)] == [200, 200]
    with psycopg.connect(warehouse) as conn:
        conn.execute("update api_keys set expires_at = now() where name = 'expired'")
    assert run_keys(api, "revoke", "revoked").exit_code == 0
    time.sleep(1.05)  # past the cache's second
    for key, message in ((expired, "this API key has expired"), (revoked, "this API key was revoked")):
        for path in PROTECTED:
            answer = client.get(path, headers=bearer(key))
            assert (answer.status_code, answer.json["message"]) == (401, message), path
            assert answer.headers["WWW-Authenticate"].startswith("Bearer realm=sluice"), path


def test_the_open_routes_answer_without_a_key_and_refuse_a_bad_one(api):
    client = api.test_client()
    assert client.get("/openapi.json").status_code == 200
    health = client.get("/health")
    assert (health.status_code, health.json) == (503, {"status": "degraded"})  # no details without a key
    key = create_key(api, "prober", "api")
    assert set(client.get("/health", headers=bearer(key)).json) == {
        "status", "db_connected", "last_etl_run", "etl_status", "reason"}
    assert client.get("/health", headers=bearer("sluice_" + "B" * 43)).status_code == 401


@pytest.mark.parametrize("args, error", [
    (["create", "--name", "x", "--sources", "api", "--expires", "soon"], "a duration such as 90d"),
    (["create", "--name", "x", "--sources", "api,*"], "or * for every source"),
    (["create", "--name", "x", "--sources", " , "], "or * for every source"),
    (["create", "--name", "bad name", "--sources", "api"], "letters, digits"),
    (["revoke", "nobody"], "no key named 'nobody'"),
])
def test_the_cli_says_what_is_wrong(api, args, error):
    result = run_keys(api, *args)
    assert result.exit_code != 0 and error in result.output


def test_a_name_is_taken_once(api):
    create_key(api, "reporting", "api")
    result = run_keys(api, "create", "--name", "reporting", "--sources", "csv")
    assert result.exit_code == 1 and "a key named 'reporting' exists" in result.output


def test_the_api_connection_stays_read_only_after_recording_a_use(api):
    """The last-used write runs in autocommit between the request's transactions; the connection goes back to the
    pool read-only and out of autocommit, so the next request's reads are one read-only snapshot again."""
    key = create_key(api, "pooled", "*")
    client = api.test_client()
    with api.app_context():
        assert client.get("/data", headers=bearer(key)).status_code == 200
        conn = db.warehouse(api).checkout()
        try:
            assert conn.autocommit is False
            with conn.cursor() as cursor:
                cursor.execute("show transaction_read_only")
                assert cursor.fetchone()[0] == "on"
        finally:
            db.warehouse(api).give_back(conn, broken=False)


def test_the_document_declares_the_key_scheme_and_the_refusals(api):
    document = api.test_client().get("/openapi.json").json
    assert document["components"]["securitySchemes"] == {"apiKey": {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["apiKey"][
            "description"]}}
    for path, item in document["paths"].items():
        operation = item["get"]
        open_route = path in ("/health", "/openapi.json")
        assert operation["security"] == ([{}, {"apiKey": []}] if open_route else [{"apiKey": []}]), path
        expected = {"401", "429"} if open_route else {"401", "403", "429"}
        assert expected <= set(operation["responses"]), path
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], path
        assert "Retry-After" in operation["responses"]["429"]["headers"], path
    health = document["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"anyOf": [{"$ref": "#/components/schemas/Health"},
                                {"$ref": "#/components/schemas/HealthSummary"}]}
    assert "**Authentication.**" in document["info"]["description"]


@pytest.mark.slow
def test_a_revoked_key_is_refused_within_a_second_by_every_gunicorn_worker(make_app, warehouse):
    """Two workers, each with its own cache: requests on fresh connections reach both; from one second after the
    revocation committed, none is served."""
    with reader_role(warehouse) as reader_url:
        admin = make_app(reader_url, AUTH="keys", ADMIN_DATABASE_URL=warehouse)
        key = create_key(admin, "busy", "*")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "2"], cwd=REPO,
            env={**os.environ, "DATABASE_URL": reader_url, "SLUICE_POOL_MIN": "0", "SLUICE_AUTH": "keys"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            statuses = []
            deadline = time.monotonic() + 30
            while not statuses or statuses[-1][1] != 200:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not serve the key"
                try:
                    statuses.append((time.monotonic(), request(port, "GET", "/sources", None, bearer(key))[0]))
                except ConnectionError:
                    time.sleep(0.1)
            for _ in range(40):  # both workers read and cache the key
                assert request(port, "GET", "/sources", None, bearer(key))[0] == 200
            assert run_keys(admin, "revoke", "busy").exit_code == 0
            revoked_at = time.monotonic()
            after = []
            while time.monotonic() - revoked_at < 2.5:
                after.append((time.monotonic() - revoked_at, request(port, "GET", "/sources", None, bearer(key))[0]))
        finally:
            server.terminate()
            server.wait(timeout=30)
    late = [status for elapsed, status in after if elapsed > api_keys.CACHE_SECONDS]
    assert late and set(late) == {401}, after
