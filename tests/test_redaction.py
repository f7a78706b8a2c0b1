"""Credentials never reach etl_runs, /runs or /stats: sluice.redact on the shapes that carry them, a
failed run whose source URL holds a password and a token, and rows stored before masking existed."""

import json
from datetime import datetime, timezone

import psycopg
import pytest
from webapp_fixtures import insert_run, set_source_error

from sluice import runs
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from sluice.failures import Failure
from sluice.redact import Secrets, mask_credential_fields, mask_credential_json, redact
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources
from webapp import create_app, db

SECRETS = ("s3cret", "abc123", "hunter2")
LEAKY_ERROR = ("ingest_api: SourceError: api: GET https://user:s3cret@api.example.com:8443/v1/posts?token=abc123"
               " answered 500 Internal Server Error; DSN host=db password=hunter2")


@pytest.mark.parametrize("text, expected", [
    # URLs keep scheme, host, port and path; userinfo, query and fragment go
    ("GET https://user:s3cret@host:8443/x/y?token=abc&b=2#frag answered 500",
     "GET https://host:8443/x/y answered 500"),
    ("GET https://host/x?access_token=abc failed", "GET https://host/x failed"),
    ("https://u:p@ss@host/x", "https://host/x"),  # a password holding '@'
    ("connect postgresql://sluice:pw@db:5432/etl_db failed", "connect postgresql://db:5432/etl_db failed"),
    ("url='http://u:pw@h/p?q=1'", "url='http://h/p'"),
    ("Max retries exceeded with url: /x?token=abc (Caused by X)", "Max retries exceeded with url: /x (Caused by X)"),
    # key=value and key: value naming a credential
    ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
    ("passwd=a pwd=b token=c api_key=d apikey=e client_secret=f", "passwd=*** pwd=*** token=*** api_key=***"
     " apikey=*** client_secret=***"),
    ('{"password": "p", "db_password":"q"}', '{"password": "***", "db_password":"***"}'),
    # headers
    ("Authorization: Basic dXNlcjpwdw==", "Authorization: Basic ***"),
    ("{'Authorization': 'Bearer abc.def', 'X-API-Key': 'k1'}", "{'Authorization': 'Bearer ***', 'X-API-Key': '***'}"),
    ("X-API-Key: k2", "X-API-Key: ***"),
    ("Proxy-Authorization: xyz", "Proxy-Authorization: ***"),
    ("sent bearer abc.def", "sent bearer ***"),
    # text without credentials is left alone
    ('password authentication failed for user "sluice"', 'password authentication failed for user "sluice"'),
    ("csv: line 7: expected 4 fields, got 2; see https://host/docs.", "csv: line 7: expected 4 fields, got 2;"
     " see https://host/docs."),
    ("why? a/b? no", "why? a/b? no"),
    # keys that only contain a credential word are data a user needs to read the error
    ("record 3: token_count: 5 is not a string", "record 3: token_count: 5 is not a string"),
    ('id field "pwd_id": 7 is bad', 'id field "pwd_id": 7 is bad'),
    ("aws_secret_access_key=AKIA1", "aws_secret_access_key=***"),
    ("private_key: k", "private_key: ***"),
])
def test_redact_masks_each_credential_shape(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # masking twice (on write, then on read) changes nothing


def test_redact_keeps_none():
    assert redact(None) is None


# Issue #22: forms the patterns missed, each as the issue gives it.
@pytest.mark.parametrize("text, expected", [
    pytest.param("Invalid leading whitespace, reserved character(s), or return character(s) in header value:"
                 " 'Basic ZXRsOmh1bnRlcjI=\\n'",
                 "Invalid leading whitespace, reserved character(s), or return character(s) in header value: '***'",
                 id="requests InvalidHeader quotes the value without its name"),
    pytest.param("Invalid header value b'Basic ZXRsOmh1bnRlcjI=\\r\\n'", "Invalid header value b'***'",
                 id="http.client quotes the value as bytes"),
    pytest.param("headers: [('Authorization', 'Basic ZXRsOmh1bnRlcjI='), ('Accept', 'text/csv')]",
                 "headers: [('Authorization', 'Basic ***'), ('Accept', 'text/csv')]", id="header tuple"),
    pytest.param("('X-Api-Key', 'abc')", "('X-Api-Key', '***')", id="header tuple without a scheme"),
    pytest.param('["Authorization", "Custom abc"]', '["Authorization", "***"]', id="header list, unknown scheme"),
    pytest.param('{"X-Api-Key": ["abc"]}', '{"X-Api-Key": ["***"]}', id="header with a list of values"),
    pytest.param('{"X-Api-Key": ["abc", "def"]}', '{"X-Api-Key": ["***", "***"]}', id="header with two values"),
    pytest.param("password=p@ss;word", "password=***", id="value cut at ;"),
    pytest.param("password=p@ss,word rest", "password=*** rest", id="value cut at ,"),
    pytest.param("password=p@ss&word rest", "password=*** rest", id="value cut at &"),
    pytest.param("password=p@ss)word rest", "password=*** rest", id="value cut at )"),
    pytest.param("pwd=a;b,c&d)e?f@g rest", "pwd=*** rest", id="value holding ; , & ) ? @"),
    pytest.param("'host=db password=hunter2'", "'host=db password=***'", id="the closing quote of a DSN stays"),
    pytest.param('"password": "pa\\"ss", "x": 1', '"password": "***", "x": 1', id="escaped quote in a value"),
    pytest.param('{"password": "cut-off-secr', '{"password": "***', id="a value whose closing quote was cut"),
    pytest.param("passphrase=opensesame", "passphrase=***", id="passphrase="),
    pytest.param("ssh_passphrase: 'x y'", "ssh_passphrase: '***'", id="passphrase:"),
    pytest.param("Cookie: session=abc; csrftoken=def", "Cookie: ***", id="Cookie:"),
    pytest.param("{'Cookie': 'a=b; c=d', 'Accept': 'text/csv'}", "{'Cookie': '***', 'Accept': 'text/csv'}",
                 id="quoted Cookie"),
    pytest.param("Set-Cookie: sid=abc; HttpOnly", "Set-Cookie: ***", id="Set-Cookie:"),
    pytest.param('"auth": "user:pw"', '"auth": "***"', id='"auth": "user:pw"'),
    pytest.param("auth=('etl', 'hunter2')", "auth=('***', '***')", id="requests auth tuple"),
    pytest.param("https://user:pa?ss@host", "https://host", id="URL password holding ?"),
    pytest.param("GET https://user:pa#ss@host:8443/x failed", "GET https://host:8443/x failed",
                 id="URL password holding #"),
    pytest.param("https://user:p;a,s&s)@host/x", "https://host/x", id="URL password holding ; , & )"),
])
def test_redact_masks_each_form_the_patterns_missed(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected


CONNECTION = Secrets.of_connection("etl", "hunter2", {"headers": {"X-Api-Key": ["k3y-from-a-file\n"]},
                                                      "Authorization": " Bearer tok-123456", "timeout": 30})


@pytest.mark.parametrize("leak", [
    pytest.param("hunter2", id="password"),
    pytest.param("etl:hunter2", id="login:password"),
    pytest.param("etl%3Ahunter2", id="login:password URL-quoted"),
    pytest.param("ZXRsOmh1bnRlcjI=", id="Base64 of login:password"),
    pytest.param("ZXRsOmh1bnRlcjI", id="Base64 without padding"),
    pytest.param("ZXRsOmh1bnRlcjI%3D", id="Base64 URL-quoted"),
    pytest.param("k3y-from-a-file\n", id="nested header value from a list"),
    pytest.param("k3y-from-a-file\\n", id="header value as repr prints it"),
    pytest.param("k3y-from-a-file", id="header value stripped"),
    pytest.param(" Bearer tok-123456", id="extra value with its leading space"),
    pytest.param("tok-123456", id="extra value without its scheme"),
])
def test_known_values_are_masked_in_any_text(leak):
    # prose that no pattern recognises: only the known values can mask it
    text = f"the server said no to <{leak}> politely"
    masked = redact(text, CONNECTION)
    assert leak.strip() not in masked and "***" in masked
    assert redact(masked, CONNECTION) == masked


def test_known_values_are_masked_longest_first():
    secrets = Secrets.of("abcdef", "abcdefgh")
    assert secrets.mask("x abcdefgh y abcdef") == "x *** y ***"


def test_short_values_and_settings_are_not_known_values():
    secrets = Secrets.of_connection(None, "abc", {"timeout": 30, "verify": True, "region": "eu"})
    assert secrets.values == frozenset()  # "abc", "eu": too short; 30 and true are settings
    assert redact("took 30 s in eu, abc", secrets) == "took 30 s in eu, abc"
    # with a login, login:password is long enough, and so is its Base64
    assert redact("sent etl:abc as ZXRsOmFiYw==", Secrets.of_connection("etl", "abc")) == "sent *** as ***"


def test_secrets_of_a_connection_read_its_extra_as_json_text_and_union_them():
    api = Secrets.of_connection(None, "s3cret-pw", '{"headers": {"X-Api-Key": "key-abc"}}')
    csv = Secrets.of_connection("u", "csv-pass", None)
    both = api.union(csv)
    assert redact("s3cret-pw key-abc u:csv-pass csv-pass", both) == "*** *** *** ***"
    assert not Secrets() and both


def served(url: str, path: str) -> str:
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    try:
        response = app.test_client().get(path)
        assert response.status_code == 200
        return response.get_data(as_text=True)
    finally:
        db.warehouse(app).close()


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in {text}"


def test_record_stores_the_error_without_credentials(database_url):
    # every failure is masked where it happens (Failure.of), with the patterns when no value is known
    outcome = runs.RunOutcome(run_id="manual__leaky", run_type="manual", started_at=datetime.now(timezone.utc),
                              failures=[Failure.of(RuntimeError(LEAKY_ERROR), step="ingest", source="api")])
    with psycopg.connect(database_url) as conn:
        runs.record(conn, outcome)
        (stored,) = conn.execute("select error_message from etl_runs where run_id = 'manual__leaky'").fetchone()
    assert_no_secret(stored)
    assert "GET https://api.example.com:8443/v1/posts answered 500" in stored  # still says what failed


# what requests said of a header value read from a file: the value, without its name (issue 22)
INVALID_HEADER = ("ingest_api[api]: InvalidHeader: Invalid leading whitespace, reserved character(s), or return"
                  " character(s) in header value: 'Basic ZXRsOmh1bnRlcjI=\\n'")
NULL_SUMMARY = {"source": None, "step": None, "error_class": None, "http_status": None, "host": None}


@pytest.mark.parametrize("path, summaries", [
    ("/runs", lambda body: body["data"][0]["errors"]),
    ("/stats", lambda body: body["last_failure_errors"]),
    ("/sources", lambda body: [body["data"][0]["last_error"]["error"]]),
])
@pytest.mark.parametrize("text", [LEAKY_ERROR, INVALID_HEADER], ids=["patterns", "unnamed header value"])
def test_error_text_stored_by_an_earlier_release_is_never_served(database_url, path, summaries, text):
    insert_run(database_url, "scheduled__old", status="failed", error_message=text)
    set_source_error(database_url, "api", "scheduled__old", text)
    body = served(database_url, path)
    assert_no_secret(body)
    assert "ZXRsOmh1bnRlcjI" not in body and "header value" not in body
    assert summaries(json.loads(body)) == [NULL_SUMMARY]


def test_health_serves_no_error_text(database_url):
    insert_run(database_url, "scheduled__old", status="failed", error_message=INVALID_HEADER)
    app = create_app({"AUTH": "none", "DATABASE_URL": database_url})
    try:
        body = app.test_client().get("/health").get_data(as_text=True)
    finally:
        db.warehouse(app).close()
    assert "ZXRsOmh1bnRlcjI" not in body and "scheduled__old failed" in body


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(api_records=10, csv_rows=10, bad_every=50)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    yield Pipeline(database_url, sources)
    sources.stop()


@pytest.mark.slow
def test_a_run_failing_on_a_url_with_credentials_records_and_serves_none_of_them(pipeline):
    # the API's first page links to a next page whose URL carries a login, a token and a password
    host = pipeline.sources.url.removeprefix("http://")
    next_url = f"http://user:s3cret@{host}/gone?token=abc123&password=hunter2"
    first_page = Fault(body=json.dumps(sample_data.posts(10)).encode(),
                       headers={"Content-Type": "application/json", "Link": f'<{next_url}>; rel="next"'})
    pipeline.sources.add_faults("posts", first_page, first_page)  # the task's retry reads it again

    state, run = pipeline.run()

    assert state == "failed"
    assert_no_secret(run["error_message"])
    assert f"GET http://{host}/gone answered 404" in run["error_message"]
    assert_no_secret(served(pipeline.database_url, "/runs"))
    assert_no_secret(served(pipeline.database_url, "/stats"))
    assert_no_secret(served(pipeline.database_url, "/sources"))


RECORD = {"id": 1, "name": "Ærø", "password": "hunter2-long", "auth": {"user": "u", "pass": "nested-secret"},
          "headers": {"X-Api-Key": ["key-value-1"]}, "token_count": 5, "note": "after"}
RECORD_SECRETS = ("hunter2-long", "nested-secret", "key-value-1")


@pytest.mark.parametrize("text", [json.dumps(RECORD), json.dumps(json.dumps(RECORD))],
                         ids=["JSON text", "a raw record quoted as one JSON string"])
def test_credential_fields_are_masked_in_json_text_cut_anywhere(text):
    for end in range(1, len(text) + 1):
        masked = mask_credential_json(text[:end])
        # no secret, nor any start of one long enough to tell
        assert not [secret for secret in RECORD_SECRETS for n in range(4, len(secret) + 1) if secret[:n] in masked], \
            (end, masked)
    assert "token_count" in mask_credential_json(text) and "after" in mask_credential_json(text)  # the rest stays


def test_credential_fields_are_masked_in_a_parsed_record_and_the_rest_kept():
    assert mask_credential_fields(RECORD) == {
        "id": 1, "name": "Ærø", "password": "***", "auth": "***", "headers": {"X-Api-Key": "***"},
        "token_count": 5, "note": "after"}
    assert mask_credential_fields([{"apiKey": 1}, None, "1,hunter2,x"]) == [{"apiKey": "***"}, None, "1,hunter2,x"]


def connection_uri(url: str, *, login: str, password: str, headers: dict) -> str:
    """An Airflow connection in its JSON form: its extra's keys are the HTTP headers HttpHook sends."""
    host, port = url.removeprefix("http://").split(":")
    return json.dumps({"conn_type": "http", "host": host, "port": int(port), "schema": "http", "login": login,
                       "password": password, "extra": headers})


# a credential read from a file or an environment variable, as requests refuses it (InvalidHeader quotes the
# value without its name): (the connection's headers, what must never be stored or served)
MALFORMED = {
    "trailing newline": ({"Authorization": "Basic ZXRsOmh1bnRlcjI=\n"}, ("ZXRsOmh1bnRlcjI", "hunter2")),
    "leading space": ({"X-Api-Key": " key-4f7a9c2e81"}, ("key-4f7a9c2e81",)),
    "carriage return inside": ({"Cookie": "session=c00k1e-v4lue\r\nX-Injected: 1"}, ("c00k1e-v4lue",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("form", MALFORMED)
def test_a_malformed_credential_of_the_connection_is_never_stored_or_served(pipeline, monkeypatch, capfd, form):
    headers, secrets = MALFORMED[form]
    monkeypatch.setenv("AIRFLOW_CONN_ETL_API", connection_uri(pipeline.sources.url, login="etl",
                                                              password="p@ss;word,&x)", headers=headers))

    state, run = pipeline.run()

    assert state == "failed" and run["status"] == "failed"
    stored = [run["error_message"], *(text for (text,) in pipeline.rows("select last_error from etl_checkpoint"))]
    assert run["error_message"].startswith("ingest[api]: InvalidHeader")  # what failed is still said
    assert run["errors"] == [{"source": "api", "step": "ingest", "error_class": "InvalidHeader", "http_status": None,
                              "host": None}]
    # the csv source, on its own connection, loaded
    assert pipeline.value("select count(*) from normalized_data where source = 'csv'") > 0
    bodies = [served(pipeline.database_url, path) for path in ("/runs", "/stats", "/sources")]
    # the task logs, which dag.test writes to this process's output: the failure and its traceback included
    logs = capfd.readouterr()
    assert "InvalidHeader: Invalid leading whitespace" in logs.out + logs.err
    for text in [*stored, *bodies, logs.out, logs.err]:
        leaked = [secret for secret in (*secrets, "p@ss;word", "ZXRsOnBAc3M7d29yZCwmeCk") if secret in (text or "")]
        assert not leaked, f"{leaked} in {text}"
    assert "InvalidHeader" in bodies[0] and "InvalidHeader" not in bodies[0].replace('"InvalidHeader"', "")
