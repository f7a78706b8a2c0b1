"""The connection's credentials stay on its origin: next links and redirects to another scheme, host or port
are refused unless SLUICE_API_ALLOWED_HOSTS lists them, and an allowed one is fetched without credentials.

Two real servers on 127.0.0.1 with different ports are two origins; each logs the requests it received."""

import io
import json

import pytest
import requests

from sluice import api_source, csv_source, http_client, settings
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from sluice.errors import SourceError
from tests import staged

POLICY = http_client.RetryPolicy(attempts=2, timeout=5.0, backoff_base=0.01, backoff_max=0.01)
JSON = "application/json"
API_KEY = "k-123-secret"
CREDENTIALS = ("authorization", "x-api-key")


def connection_session() -> requests.Session:
    """What HttpHook.get_conn gives for a connection with a login and an API key in its extras."""
    session = requests.Session()
    session.auth = ("etl", "s3cret")
    session.headers["X-API-Key"] = API_KEY
    return session


def host_port(server) -> tuple[str, int]:
    host, port = server.httpd.server_address[:2]
    return host, port


def refusal(home, url) -> str:
    return (f"{url}, which is not on the connection's origin ({home.url}); not followed. List its host[:port] "
            "in SLUICE_API_ALLOWED_HOSTS to allow it (it then gets none of the connection's credentials)")


def credentials_seen(server) -> list[str]:
    return [name for _, headers in server.requests for name in headers if name.lower() in CREDENTIALS]


def fetch_api(home, path, **kwargs):
    out = io.BytesIO()
    with connection_session() as session:
        counts = api_source.fetch(session, f"{home.url}/{path}", settings.DEFAULT_API_MAPPING, out, run_id="run-1",
                                  uri="file:///s", policy=POLICY, max_pages=10, max_bytes=10_000_000,
                                  sleep=lambda seconds: None, **kwargs)
    return counts, staged.decode(out.getvalue())


def fetch_csv(home, path, workdir, **kwargs):
    out = io.BytesIO()
    with connection_session() as session:
        counts = csv_source.fetch(session, f"{home.url}/{path}", settings.DEFAULT_CSV_MAPPING, out, run_id="run-1",
                                  uri="file:///s", policy=POLICY, max_bytes=10_000_000, workdir=str(workdir),
                                  sleep=lambda seconds: None, **kwargs)
    return counts, staged.decode(out.getvalue())


def serve_page(server, path, records, next_link=None):
    headers = {"Content-Type": JSON, **({"Link": f'<{next_link}>; rel="next"'} if next_link else {})}
    server.serve_bytes(path, b"[]", content_type=JSON)
    server.add_faults(path, Fault(200, body=json.dumps(records).encode(), headers=headers))


def redirect(server, path, location):
    server.serve_bytes(path, b"", content_type=JSON)
    server.add_faults(path, Fault(302, headers={"Location": location}))


@pytest.mark.parametrize("link", [
    pytest.param("{other}/second", id="other-port"),
    pytest.param("https://{home_host}:{home_port}/second", id="other-scheme"),
    pytest.param("http://localhost:{home_port}/second", id="other-host-name"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local-metadata"),
])
def test_next_link_to_another_origin_fails_the_source_before_any_request(home, other, link):
    host, port = host_port(home)
    next_link = link.format(other=other.url, home_host=host, home_port=port)
    serve_page(home, "first", [{"id": 1}], next_link)
    with pytest.raises(SourceError) as excinfo:
        fetch_api(home, "first")
    assert str(excinfo.value) == f"api: {home.url}/first: next link {refusal(home, next_link)}"
    assert other.requests == []


def test_refused_next_link_on_the_first_page_stages_nothing(home, other):
    serve_page(home, "first", [{"id": 1}], f"{other.url}/second")
    out = io.BytesIO()
    with pytest.raises(SourceError), connection_session() as session:
        api_source.fetch(session, f"{home.url}/first", settings.DEFAULT_API_MAPPING, out, run_id="run-1",
                         uri="file:///s", policy=POLICY, max_pages=10, max_bytes=10_000_000)
    assert out.getvalue() == b""


def test_allowed_host_is_paged_without_the_connections_credentials(home, other):
    serve_page(home, "first", [{"id": 1}], f"{other.url}/second")
    serve_page(other, "second", [{"id": 2}], f"{home.url}/third")
    serve_page(home, "third", [{"id": 3}])
    counts, lines = fetch_api(home, "first", allowed_hosts={host_port(other)})
    assert (counts.records, counts.pages) == (3, 3)
    assert [line.source_id for line in lines] == ["1", "2", "3"]
    assert [path for path, _ in other.requests] == ["/second"]
    assert credentials_seen(other) == []
    # back on the connection's own origin, its credentials are sent again
    assert [headers.get("X-API-Key") for _, headers in home.requests] == [API_KEY, API_KEY]
    assert all(headers["Authorization"].startswith("Basic ") for _, headers in home.requests)


def test_allowed_host_without_port_means_the_schemes_default_port(home, other):
    serve_page(home, "first", [{"id": 1}], f"{other.url}/second")
    with pytest.raises(SourceError, match="not on the connection's origin"):
        fetch_api(home, "first", allowed_hosts={(host_port(other)[0], None)})  # port 80, not other's
    assert other.requests == []


def test_api_redirect_to_another_origin_is_refused(home, other):
    redirect(home, "posts", f"{other.url}/posts")
    with pytest.raises(SourceError) as excinfo:
        fetch_api(home, "posts")
    assert str(excinfo.value) == f"api: GET {home.url}/posts redirects to {refusal(home, f'{other.url}/posts')}"
    assert other.requests == []


def test_api_redirect_to_an_allowed_host_gets_no_credentials(home, other):
    redirect(home, "posts", f"{other.url}/v2/posts")
    other.serve_json("v2/posts", sample_data.posts(3))
    counts, _ = fetch_api(home, "posts", allowed_hosts={host_port(other)})
    assert counts.records == 3
    assert [path for path, _ in other.requests] == ["/v2/posts"]
    assert credentials_seen(other) == []


def test_redirect_within_the_origin_is_followed_with_credentials(home, other):
    redirect(home, "posts", "/v2/posts?page=1")
    home.serve_json("v2/posts", sample_data.posts(2))
    counts, _ = fetch_api(home, "posts")
    assert counts.records == 2
    assert [path for path, _ in home.requests] == ["/posts", "/v2/posts?page=1"]
    assert [headers.get("X-API-Key") for _, headers in home.requests] == [API_KEY, API_KEY]


def test_redirect_loop_ends(home, other):
    redirect(home, "loop", "/loop")
    home.add_faults("loop", *[Fault(302, headers={"Location": "/loop"})] * 20)
    with pytest.raises(SourceError, match=rf"^api: GET {home.url}/loop: more than 10 redirects$"):
        fetch_api(home, "loop")


def test_csv_redirect_to_another_origin_is_refused(home, other, tmp_path):
    redirect(home, "items.csv", f"{other.url}/items.csv")
    with pytest.raises(SourceError) as excinfo:
        fetch_csv(home, "items.csv", tmp_path)
    assert str(excinfo.value) == (
        f"csv: GET {home.url}/items.csv redirects to {refusal(home, f'{other.url}/items.csv')}")
    assert other.requests == []


def test_csv_redirect_to_an_allowed_host_gets_no_credentials(home, other, tmp_path):
    redirect(home, "items.csv", f"{other.url}/files/items.csv")
    other.serve_bytes("files/items.csv", sample_data.csv_bytes(5))
    counts, _ = fetch_csv(home, "items.csv", tmp_path, allowed_hosts={host_port(other)})
    assert counts.records == 5
    assert credentials_seen(other) == []
