"""Page-number and offset pagination against loopback servers that cap, ignore or repeat pages (issue #22):
a read ends on an empty page (or a short one the server's total count confirms), fails on a repeated page,
and says when it may be partial, so that delete_missing never tombstones rows that still exist."""

import io
import json

import pytest
import requests

from sluice import api_source, http_client, settings
from sluice.errors import InvalidSource, SourceError
from sluice.sources import Pagination
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests import staged

POLICY = http_client.RetryPolicy(attempts=1, timeout=5.0, backoff_base=0.01, backoff_max=0.01)
JSON = "application/json; charset=utf-8"
PAGINATIONS = {"page_param": Pagination("page_param", param="_page", page_size=7, size_param="_limit"),
               "offset_param": Pagination("offset_param", param="_start", page_size=7, size_param="_limit")}


@pytest.fixture(scope="module")
def running():
    with SourceServer() as started:
        yield started


@pytest.fixture
def server(running):
    """The module's server, its routes and request log emptied for each test."""
    running.routes.clear()
    running.requests.clear()
    return running


def fetch(server, kind, *, max_pages=50):
    """api_source.fetch of server/posts with the pagination of kind (7 records a page asked): (counts, lines)."""
    out = io.BytesIO()
    with requests.Session() as session:
        counts = api_source.fetch(session, f"{server.url}/posts", settings.DEFAULT_API_MAPPING, out, run_id="run-1",
                                  uri="file:///s", policy=POLICY, max_pages=max_pages, max_bytes=10_000_000,
                                  pagination=PAGINATIONS[kind], name="posts", sleep=lambda seconds: None)
    return counts, staged.decode(out.getvalue())


def fetch_error(server, kind, **kwargs) -> str:
    with pytest.raises(SourceError) as failure:
        fetch(server, kind, **kwargs)
    return str(failure.value)


def asked(server) -> list[str]:
    return [path for path, _ in server.requests]


@pytest.mark.parametrize("kind", PAGINATIONS)
@pytest.mark.parametrize("total_count", [True, False], ids=["x-total-count", "no-count"])
def test_a_server_capping_the_page_size_is_read_whole(server, kind, total_count):
    # 6 records a page when 7 are asked: issue #22's read ended after page 1, and 4 of 10 rows were deleted
    posts = sample_data.posts(10)
    server.serve_json("posts", posts, max_page_size=6, total_count=total_count)

    counts, lines = fetch(server, kind)

    assert [line.data for line in lines] == posts
    assert counts.whole_read
    # with a count, the short page 2 is known to be the last; without one, an empty page 3 says so
    assert counts.pages == (2 if total_count else 3)


@pytest.mark.parametrize("total_count", [True, False], ids=["x-total-count", "no-count"])
def test_a_server_ignoring_the_size_and_page_fails_at_the_repeated_page(server, total_count):
    # every record on every page: the page number changes nothing
    server.serve_json("posts", sample_data.posts(10), ignore_size=True, total_count=total_count)

    message = fetch_error(server, "page_param")

    assert message == (f"posts: {server.url}/posts?_page=2&_limit=7: page 2 repeats page 1 (the same 10 records): "
                       "the server ignores the '_page' parameter or '_limit' parameter; stopped, nothing of the "
                       "read is loaded")
    assert len(asked(server)) == 2


def test_an_offset_server_ignoring_the_size_is_read_whole_once(server):
    # _start honoured, _limit not: everything from the offset, then an empty page
    posts = sample_data.posts(10)
    server.serve_json("posts", posts, ignore_size=True, total_count=False)

    counts, lines = fetch(server, "offset_param")

    assert [line.data for line in lines] == posts and counts.whole_read
    assert asked(server) == ["/posts?_start=0&_limit=7", "/posts?_start=10&_limit=7"]


@pytest.mark.parametrize("kind", PAGINATIONS)
@pytest.mark.parametrize("records", [10, 14], ids=["short-last-page", "full-last-page"])
def test_a_server_repeating_its_last_page_forever_fails_instead_of_looping(server, kind, records):
    server.serve_json("posts", sample_data.posts(records), repeat_last_page=True, total_count=False)

    message = fetch_error(server, kind, max_pages=1000)

    last = records - 7
    repeated = "_page=3" if kind == "page_param" else f"_start={records}"
    assert message.startswith(f"posts: {server.url}/posts?{repeated}&_limit=7: page 3 repeats page 2 "
                              f"(the same {last} records)")
    assert len(asked(server)) == 3


def test_a_read_that_ends_short_of_the_servers_count_is_partial(server):
    # the server counts 12, an empty page comes after 10: records went while the read went on, or the
    # server stopped early; the read cannot tell which rows are gone
    posts = sample_data.posts(10)
    headers = {"Content-Type": JSON, "X-Total-Count": "12"}
    server.serve_bytes("posts", b"[]", content_type=JSON)
    server.add_faults("posts", *(Fault(200, body=json.dumps(page).encode(), headers=headers)
                                 for page in (posts[:7], posts[7:], [])))

    counts, lines = fetch(server, "page_param")

    assert [line.data for line in lines] == posts
    assert not counts.whole_read


@pytest.mark.parametrize("value", ["many", "-1", ""])
def test_a_total_count_that_is_not_a_count_fails_the_source(server, value):
    server.serve_bytes("posts", b"[]", content_type=JSON)
    server.add_faults("posts", Fault(200, body=b"[]", headers={"Content-Type": JSON, "X-Total-Count": value}))

    assert fetch_error(server, "page_param") == (
        f"posts: {server.url}/posts?_page=1&_limit=7: X-Total-Count {value!r} is not a count of records")


@pytest.mark.parametrize("kind", PAGINATIONS)
def test_whole_reads_of_a_well_behaved_server_are_whole(server, kind):
    posts = sample_data.posts(15)
    server.serve_json("posts", posts)

    counts, lines = fetch(server, kind)

    assert [line.data for line in lines] == posts
    assert (counts.pages, counts.whole_read) == (3, True)


def serve_pages(server, pages: list, headers: dict | None = None) -> None:
    """Each body in pages, in order, whatever the query asks; an empty array after them."""
    server.serve_bytes("posts", b"[]", content_type=JSON)
    headers = {"Content-Type": JSON, **(headers or {})}
    server.add_faults("posts", *(Fault(200, body=json.dumps(page).encode(), headers=headers) for page in pages))


def fetch_counted_by(server, total_field):
    pagination = Pagination("page_param", param="_page", page_size=7, size_param="_limit", total_field=total_field)
    out = io.BytesIO()
    with requests.Session() as session:
        counts = api_source.fetch(session, f"{server.url}/posts", settings.DEFAULT_API_MAPPING, out, run_id="run-1",
                                  uri="file:///s", policy=POLICY, max_pages=50, max_bytes=10_000_000,
                                  pagination=pagination, name="posts", sleep=lambda seconds: None)
    return counts, staged.decode(out.getvalue())


@pytest.mark.parametrize("total, pages, whole", [(10, 2, True), (12, 3, False), (None, 3, True)],
                         ids=["reached", "never-reached", "null"])
def test_a_total_field_in_the_body_ends_a_short_page_or_marks_the_read_partial(server, total, pages, whole):
    posts = sample_data.posts(10)
    # the body's count wins over the header's
    serve_pages(server, [{"data": posts[:6], "meta": {"total": total}}, {"data": posts[6:], "meta": {"total": total}}],
                headers={"X-Total-Count": "99"})

    counts, lines = fetch_counted_by(server, "meta.total")

    assert [line.data for line in lines] == posts
    assert (counts.pages, counts.whole_read) == (pages, whole)


@pytest.mark.parametrize("value", ["10", -1, 2.5, True])
def test_a_total_field_that_is_not_a_count_fails_the_source(server, value):
    serve_pages(server, [{"data": sample_data.posts(3), "total": value}])
    with pytest.raises(SourceError) as failure:
        fetch_counted_by(server, "total")
    assert str(failure.value) == (f"posts: {server.url}/posts?_page=1&_limit=7: total_field 'total' is {value!r}, "
                                  "expected a count of records")


def test_total_field_is_an_option_of_counted_paginations_only():
    assert Pagination.of({"type": "offset_param", "param": "o", "page_size": 5, "total_field": "meta.total"},
                         "p").total_field == "meta.total"
    with pytest.raises(InvalidSource, match="type 'link' takes no total_field"):
        Pagination.of({"type": "link", "total_field": "total"}, "p")
    with pytest.raises(InvalidSource, match=r"p.total_field must be a non-empty string, got 5"):
        Pagination.of({"type": "page_param", "param": "p", "page_size": 5, "total_field": 5}, "p")


def test_a_link_paginated_read_pays_no_heed_to_a_total_count(server):
    # X-Total-Count means nothing to the link and next_field paginations: a wrong one fails nothing
    posts = sample_data.posts(3)
    serve_pages(server, [posts], headers={"X-Total-Count": "many"})
    out = io.BytesIO()
    with requests.Session() as session:
        counts = api_source.fetch(session, f"{server.url}/posts", settings.DEFAULT_API_MAPPING, out, run_id="run-1",
                                  uri="file:///s", policy=POLICY, max_pages=50, max_bytes=10_000_000, name="posts")
    assert (counts.records, counts.pages, counts.whole_read) == (3, 1, True)
