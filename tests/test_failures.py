"""sluice.failures: a failure keeps no credential in its message and none at all in its summary, whatever
exception carries it; it names source, step, error class, HTTP status and host, and travels as JSON."""

import json

import pytest
import requests

from sluice.errors import SourceError
from sluice.failures import MAX_MESSAGE_CHARS, SUMMARY_FIELDS, Failure
from sluice.redact import Secrets

BASIC = "Basic ZXRsOmh1bnRlcjI="  # etl:hunter2
SECRETS = Secrets.of_connection("etl", "hunter2", {"headers": {"Authorization": BASIC + "\n"}})


def invalid_header(value: str) -> requests.exceptions.InvalidHeader:
    """The exception requests raises for a header value read from a file or an environment variable."""
    try:
        requests.Request("GET", "https://api.example.com:8443/v1/posts", headers={"Authorization": value}).prepare()
    except requests.exceptions.InvalidHeader as exc:
        return exc
    raise AssertionError(f"requests accepted the header value {value!r}")


def http_error(status: int, url: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code, response.url, response.reason = status, url, "Nope"
    return requests.HTTPError(f"{status} Client Error: Nope for url: {url}", response=response)


def leaks(failure: Failure, *values: str) -> list[str]:
    served = failure.message + json.dumps(failure.summary())
    return [value for value in values if value in served]


@pytest.mark.parametrize("value", [BASIC + "\n", " " + BASIC, BASIC + "\r\n", "\t" + BASIC + " "],
                         ids=["trailing newline", "leading space", "trailing CRLF", "tab and space"])
@pytest.mark.parametrize("secrets", [SECRETS, None], ids=["known values", "patterns only"])
def test_an_invalid_header_leaves_no_credential_in_the_failure(value, secrets):
    exc = invalid_header(value)
    assert "ZXRsOmh1bnRlcjI=" in str(exc)  # what requests itself says: the credential, without its name

    failure = Failure.of(exc, step="ingest", source="api", secrets=secrets)

    assert not leaks(failure, value, value.strip(), "ZXRsOmh1bnRlcjI", "hunter2", "etl:hunter2")
    assert failure.error_class == "InvalidHeader"
    assert failure.summary() == {"source": "api", "step": "ingest", "error_class": "InvalidHeader",
                                 "http_status": None, "host": None}


def test_the_summary_carries_no_text_of_the_exception():
    failure = Failure.of(ValueError("anything at all hunter2"), step="upsert", source="csv", secrets=None)
    assert set(failure.summary()) == set(SUMMARY_FIELDS)
    assert "anything" not in json.dumps(failure.summary())


def test_status_and_host_come_from_the_response_of_a_wrapped_http_error_never_its_userinfo():
    cause = http_error(503, "https://etl:hunter2@api.example.com:8443/v1/posts?token=abc123")
    try:
        try:
            raise cause
        except requests.HTTPError as exc:
            raise SourceError("api: the API failed") from exc
    except SourceError as exc:
        failure = Failure.of(exc, step="ingest", source="api", secrets=SECRETS)

    assert (failure.http_status, failure.host) == (503, "api.example.com:8443")
    assert failure.error_class == "SourceError"
    assert not leaks(failure, "hunter2", "abc123")


@pytest.mark.parametrize("exc, status, host", [
    pytest.param(SourceError("api: GET https://user:pa?ss@h.example:9/x answered 404 Not Found; not retried"),
                 404, "h.example:9", id="sluice's own wording, a password holding ?"),
    pytest.param(type("Refused", (Exception,), {"http_status": 429})("slow down"), 429, None, id="http_status"),
    pytest.param(type("Refused", (Exception,), {"status": True})("x"), None, None, id="a bool is no status"),
    pytest.param(OSError("connect to http://[::1]:5000/x refused"), None, "[::1]:5000", id="IPv6 host"),
    pytest.param(OSError("connect to http://u:p@host:notaport/x refused"), None, None, id="a port that is no number"),
])
def test_status_and_host_are_read_from_attributes_or_the_message(exc, status, host):
    failure = Failure.of(exc, step="ingest", source="api", secrets=None)
    assert (failure.http_status, failure.host) == (status, host)
    assert "pa?ss" not in failure.message and "user" not in (failure.host or "")


def test_the_message_is_bounded():
    failure = Failure.of(RuntimeError("x" * 10_000 + " password=hunter2"), step="s", source=None, secrets=None)
    assert len(failure.message) == MAX_MESSAGE_CHARS
    assert failure.message.endswith("[... shortened]")


def test_a_failure_travels_as_json_and_comes_back_equal():
    failure = Failure.of(http_error(500, "https://api.example.com/x"), step="ingest", source="api", secrets=SECRETS)
    assert Failure.from_json(failure.to_json()) == failure
    assert Failure.from_json(json.loads(failure.to_json())) == failure  # as XCom or a jsonb column gives it back
    with pytest.raises(ValueError, match="no field colour"):
        Failure.from_json({**failure.summary(), "message": "m", "colour": "red"})


def test_a_cycle_of_causes_ends():
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert Failure.of(first, step="s", source=None, secrets=None).http_status is None
