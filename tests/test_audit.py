"""The audit trail (logger sluice.audit, JSON lines): who read what, each refused credential, each key created and
revoked; and no key or token in any log line or answer."""

import json
import logging
import os
import pwd
import time

from auth_fixtures import bearer, create_key, issuer, run_keys  # noqa: F401 (issuer is a fixture)
from webapp_fixtures import catalog, insert_records, make_app  # noqa: F401 (make_app is a fixture)

from webapp import api_keys

AUDIENCE = "sluice-api"


def audit_lines(caplog) -> list[dict]:
    return [json.loads(record.getMessage()) for record in caplog.records if record.name == "sluice.audit"]


def test_reads_refusals_and_key_changes_are_audited_without_secrets(make_app, database_url, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)  # every logger, so a secret in any line would be seen
    insert_records(database_url, catalog(6))
    app = make_app(database_url, AUTH="keys")
    key = create_key(app, "reporting", "api")
    client = app.test_client()
    assert client.get("/data?page_size=2", headers=bearer(key)).status_code == 200
    assert client.get("/data/csv/item-2", headers=bearer(key)).status_code == 404
    unknown = "sluice_" + "Z" * 43
    assert client.get("/stats", headers=bearer(unknown)).status_code == 401
    assert run_keys(app, "revoke", "reporting").exit_code == 0

    created, read, missing, refused, revoked = audit_lines(caplog)
    operator = pwd.getpwuid(os.geteuid()).pw_name
    assert {k: created[k] for k in ("event", "key_name", "sources", "operations", "by")} == {
        "event": "key_created", "key_name": "reporting", "sources": ["api"], "operations": False, "by": operator}
    assert {k: read[k] for k in ("event", "principal", "route", "sources", "status", "rows", "client")} == {
        "event": "request", "principal": "key:reporting", "route": "/data", "sources": ["api"], "status": 200,
        "rows": 2, "client": "127.0.0.1"}
    assert read["duration_ms"] > 0 and read["at"].endswith("+00:00")
    assert (missing["route"], missing["status"], missing["rows"], missing["sources"]) == (
        "/data/<source>/<id:source_id>", 404, 0, [])
    assert {k: refused[k] for k in ("event", "reason", "client", "path", "key_name")} == {
        "event": "credential_refused", "reason": "unknown_key", "client": "127.0.0.1", "path": "/stats",
        "key_name": None}
    assert len(refused["key_id"]) == 8  # the start of the key's hash: enough to match it, nothing of the key
    assert (revoked["event"], revoked["key_name"], revoked["by"]) == ("key_revoked", "reporting", operator)

    time.sleep(api_keys.CACHE_SECONDS)  # what a worker read before the revocation, it trusts for at most this long
    assert client.get("/data", headers=bearer(key)).json["message"] == "this API key was revoked"
    again = audit_lines(caplog)[-1]
    assert (again["reason"], again["key_name"]) == ("revoked_key", "reporting")

    everything = caplog.text + "".join(str(record.args) for record in caplog.records)
    for secret in (key, key[len("sluice_"):], unknown[len("sluice_"):]):
        assert secret not in everything


def test_token_subjects_are_audited_and_tokens_never_logged(make_app, database_url, issuer, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    kid = issuer.add_key()
    app = make_app(database_url, AUTH="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE)
    client = app.test_client()
    good, expired = issuer.token(kid, AUDIENCE, subject="alice"), issuer.token(kid, AUDIENCE, lifetime=-3600)
    assert client.get("/sources", headers=bearer(good)).status_code == 200
    assert client.get("/runs", headers=bearer(issuer.token(kid, AUDIENCE, scope="sluice:read:api"))).status_code == 403
    assert client.get("/sources", headers=bearer(expired)).status_code == 401
    read, forbidden, refused = audit_lines(caplog)
    assert (read["principal"], read["route"], read["status"]) == ("oidc:alice", "/sources", 200)
    assert (forbidden["route"], forbidden["status"], forbidden["rows"]) == ("/runs", 403, 0)
    assert (refused["event"], refused["reason"]) == ("credential_refused", "expired_token")
    for token in (good, expired):
        assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_an_open_api_warns_at_start_and_audits_nothing(make_app, database_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    app = make_app(database_url, AUTH="none")
    assert any("SLUICE_AUTH=none" in record.getMessage() and record.levelno == logging.WARNING
               for record in caplog.records)
    assert app.test_client().get("/data").status_code == 200
    assert audit_lines(caplog) == []
