"""api_source.fetch against a loopback JSON API: response shapes, Link pagination, bad bodies, bad records."""

import hashlib
import io
import json
import subprocess
import sys

import pytest
import requests

from sluice import api_source, http_client, settings
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from sluice.errors import SourceError
from tests import staged

API = settings.DEFAULT_API_MAPPING
POLICY = http_client.RetryPolicy(attempts=2, timeout=5.0, backoff_base=0.01, backoff_max=0.01)
JSON = "application/json; charset=utf-8"


@pytest.fixture(scope="module")
def server():
    with SourceServer() as running:
        yield running


def fetch(server, path, field_map=API, *, max_pages=100, max_bytes=10_000_000, params=None):
    """Run api_source.fetch on server/path; return its counts and the decoded staged lines."""
    out = io.BytesIO()
    with requests.Session() as session:
        counts = api_source.fetch(session, f"{server.url}/{path}", field_map, out, run_id="run-1", uri="file:///s",
                                  policy=POLICY, max_pages=max_pages, max_bytes=max_bytes, params=params,
                                  sleep=lambda seconds: None)
    return counts, staged.decode(out.getvalue())


def fetch_error(server, path, **kwargs) -> str:
    with pytest.raises(SourceError) as excinfo:
        fetch(server, path, **kwargs)
    return str(excinfo.value)


def serve_document(server, path, document):
    server.serve_bytes(path, json.dumps(document).encode(), content_type=JSON)


def serve_linked_page(server, path, records, next_link):
    """One JSON page whose Link header points at next_link (absolute or relative)."""
    server.serve_bytes(path, b"[]", content_type=JSON)
    headers = {"Content-Type": JSON, "Link": f'<{next_link}>; rel="next"'}
    server.add_faults(path, Fault(200, body=json.dumps(records).encode(), headers=headers))


def test_json_array_stages_every_record(server):
    posts = sample_data.posts(5)
    server.serve_json("posts", posts)
    counts, lines = fetch(server, "posts")
    assert (counts.records, counts.problems, counts.pages) == (5, 0, 1)
    assert (counts.source, counts.uri) == ("api", "file:///s")
    assert [line.data for line in lines] == posts
    assert [(line.record_no, line.source_id) for line in lines] == [(n, str(n)) for n in range(1, 6)]
    assert {(line.run_id, line.source, line.problem, line.payload) for line in lines} == {("run-1", "api", None, None)}
    assert counts.bytes == len(json.dumps(posts).encode())


def test_empty_array_stages_nothing(server):
    server.serve_json("posts", [])
    counts, lines = fetch(server, "posts")
    assert (counts.records, counts.problems, counts.pages, lines) == (0, 0, 1, [])


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda records: {"data": records, "meta": {"total": 3}}, id="data"),
    pytest.param(lambda records: {"items": records}, id="items"),
    pytest.param(lambda records: {"results": records, "next": None}, id="results"),
    pytest.param(lambda records: {"records": records}, id="records"),
    pytest.param(lambda records: {"rows": records}, id="rows"),
    pytest.param(lambda records: {"posts": records, "count": 3}, id="single-list-valued-key"),
    pytest.param(lambda records: {"data": records, "included": [{"id": "x"}]}, id="wrapper-key-wins"),
])
def test_object_wrapping_one_array(server, wrap):
    posts = sample_data.posts(3)
    serve_document(server, "wrapped", wrap(posts))
    counts, lines = fetch(server, "wrapped")
    assert counts.records == 3
    assert [line.data for line in lines] == posts


@pytest.mark.parametrize("document, problem", [
    ({"posts": [{"id": 1}], "users": [{"id": 2}]},
     "the response object holds several arrays (posts, users); "
     "expected one, or one under data/items/results/records/rows"),
    ({"id": 1, "title": "a single object"}, "the response object holds no array of records"),
    (42, "expected a JSON array or object, got int"),
    ("text", "expected a JSON array or object, got str"),
])
def test_response_without_one_clear_array_is_an_error(server, document, problem):
    serve_document(server, "odd", document)
    assert fetch_error(server, "odd") == f"api: {server.url}/odd: {problem}"


@pytest.mark.parametrize("total, page_size, pages", [(23, 5, 5), (20, 5, 4), (1, 5, 1), (0, 5, 1)])
def test_link_next_pagination_stages_every_record_once(server, total, page_size, pages):
    posts = sample_data.posts(total)
    server.serve_json("posts", posts, page_size=page_size)
    counts, lines = fetch(server, "posts")
    assert (counts.records, counts.pages) == (total, pages)
    assert [line.data for line in lines] == posts
    assert [line.record_no for line in lines] == list(range(1, total + 1))
    assert len(server.routes["posts"].hits) == pages


def test_params_go_on_the_first_request_and_next_links_keep_them(server):
    server.serve_json("posts", sample_data.posts(30))
    counts, lines = fetch(server, "posts", params={"id_gte": 21, "_limit": 4})
    assert (counts.records, counts.pages) == (10, 3)
    assert [line.source_id for line in lines] == [str(n) for n in range(21, 31)]


def test_relative_next_link_is_followed(server):
    serve_linked_page(server, "first", [{"id": 1}], "/v1/second?cursor=abc")
    serve_document(server, "v1/second", [{"id": 2}])
    counts, lines = fetch(server, "first")
    assert (counts.records, counts.pages) == (2, 2)
    assert [line.source_id for line in lines] == ["1", "2"]


@pytest.mark.parametrize("pages, loops_back_to", [
    pytest.param({"loop": "loop"}, "loop", id="page-links-to-itself"),
    pytest.param({"loop": "b", "b": "loop"}, "loop", id="two-pages-link-to-each-other"),
    pytest.param({"loop": "b", "b": "c", "c": "b"}, "b", id="later-page-links-back"),
])
def test_pagination_loop_is_an_error(server, pages, loops_back_to):
    for path, next_path in pages.items():
        serve_linked_page(server, path, [{"id": path}], f"{server.url}/{next_path}")
    last_page = list(pages)[-1]
    assert fetch_error(server, "loop") == (
        f"api: {server.url}/{last_page}: pagination loops back to {server.url}/{loops_back_to}")


def test_more_pages_than_max_pages_is_an_error_naming_the_setting(server):
    server.serve_json("posts", sample_data.posts(23), page_size=5)
    message = fetch_error(server, "posts", max_pages=4)
    assert message == f"api: more than SLUICE_MAX_PAGES (4) pages; stopped at {server.url}/posts?_page=5&_limit=5"
    assert len(server.routes["posts"].hits) == 4


def test_exactly_max_pages_is_fine(server):
    server.serve_json("posts", sample_data.posts(23), page_size=5)
    counts, _ = fetch(server, "posts", max_pages=5)
    assert (counts.records, counts.pages) == (23, 5)


def test_max_bytes_counts_all_pages_together(server):
    posts = sample_data.posts(10)
    server.serve_json("posts", posts, page_size=5)
    first_page = len(json.dumps(posts[:5]).encode())
    message = fetch_error(server, "posts", max_bytes=first_page + 10)
    assert message == f"api: {server.url}/posts?_page=2&_limit=5 exceeds SLUICE_MAX_BYTES ({first_page + 10} bytes)"


@pytest.mark.parametrize("body, content_type, problem", [
    (b"<!doctype html><html><body>Maintenance</body></html>", "text/html; charset=utf-8",
     "invalid JSON (Content-Type text/html; charset=utf-8): Expecting value: line 1 column 1 (char 0)"),
    (b'[{"id": 1}, {"id": 2}', JSON, f"invalid JSON (Content-Type {JSON}): Expecting ',' delimiter"),
    (b'[{"id": "caf\xe9"}]', JSON, f"invalid JSON (Content-Type {JSON}): 'utf-8' codec can't decode byte 0xe9"),
    (b'{"id": 1} {"id": 2}', JSON, f"invalid JSON (Content-Type {JSON}): Extra data"),
    (b"", JSON, "empty body"),
    (b" \r\n\t", JSON, "empty body"),
])
def test_body_that_is_not_json_names_source_page_and_problem(server, body, content_type, problem):
    server.serve_bytes("bad", body, content_type=content_type)
    assert fetch_error(server, "bad").startswith(f"api: {server.url}/bad: {problem}")


def test_bad_body_on_a_later_page_names_that_page(server):
    serve_linked_page(server, "good", [{"id": 1}], f"{server.url}/broken?_page=2")
    server.serve_bytes("broken", b"<html>502 Bad Gateway</html>", content_type="text/html")
    assert fetch_error(server, "good").startswith(
        f"api: {server.url}/broken?_page=2: invalid JSON (Content-Type text/html)")


def test_transient_error_is_retried_within_fetch(server):
    server.serve_json("posts", sample_data.posts(3))
    server.add_faults("posts", Fault(503))
    counts, _ = fetch(server, "posts")
    assert counts.records == 3
    assert len(server.routes["posts"].hits) == 2


BAD_RECORDS = [
    ({"id": 1, "title": "good"}, None),
    ("just text", "record 2 is a string, not an object"),
    ([{"id": 3}], "record 3 is a list, not an object"),
    ({"title": "no id"}, "record 4: missing id field 'id'"),
    ({"id": None}, "record 5: missing id field 'id'"),
    ({"id": True}, "record 6: id field 'id' is a boolean, expected a string or integer"),
    ({"id": 7.0}, "record 7: id field 'id' is a number, expected a string or integer"),
    ({"id": {"value": 8}}, "record 8: id field 'id' is an object, expected a string or integer"),
    ({"id": ["9"]}, "record 9: id field 'id' is a list, expected a string or integer"),
    ({"id": ""}, "record 10: id field 'id' is blank"),
    ({"id": "  \t"}, "record 11: id field 'id' is blank"),
    ({"id": 0}, None),
    ({"id": " k-13 "}, None),
    ({"id": -14}, None),
]


def test_bad_records_become_problems_and_the_rest_load(server):
    serve_document(server, "mixed", [record for record, _ in BAD_RECORDS])
    counts, lines = fetch(server, "mixed")
    assert [line.record_no for line in lines] == list(range(1, len(BAD_RECORDS) + 1))
    assert [line.problem for line in lines] == [problem for _, problem in BAD_RECORDS]
    assert (counts.records, counts.problems) == (4, 10)
    assert [line.source_id for line in staged.records(lines)] == ["1", "0", "k-13", "-14"]
    for line, (record, _) in zip(lines, BAD_RECORDS):
        if line.problem:
            assert (line.source_id, line.data) == (None, None)
            assert json.loads(line.payload) == record
        else:
            assert line.data == record


@pytest.mark.parametrize("record", [5, None, 2.5, True])
def test_scalar_records_are_problems_not_crashes(server, record):
    serve_document(server, "scalars", [{"id": 1}, record])
    counts, lines = fetch(server, "scalars")
    assert (counts.records, counts.problems) == (1, 1)
    problem = lines[1].problem
    assert problem.startswith("record 2 is ") and problem.endswith(", not an object")
    assert lines[1].payload == json.dumps(record)


def test_record_numbers_continue_across_pages(server):
    records = [{"id": 1}, {"id": None}, {"id": 3}, "x", {"id": 5}]
    server.serve_json("posts", records, page_size=2)
    counts, lines = fetch(server, "posts")
    assert (counts.records, counts.problems, counts.pages) == (3, 2, 3)
    assert [(line.record_no, line.problem) for line in lines] == [
        (1, None), (2, "record 2: missing id field 'id'"), (3, None),
        (4, "record 4 is a string, not an object"), (5, None)]


def test_nul_in_a_record_is_a_problem_and_others_load(server):
    serve_document(server, "nul", [{"id": 1, "title": "a\u0000b"}, {"id": 2, "title": "fine"}])
    counts, lines = fetch(server, "nul")
    assert (counts.records, counts.problems) == (1, 1)
    assert (lines[0].source_id, lines[0].problem) == ("1", "record 1: contains a NUL character")


def test_lone_surrogate_in_a_record_is_a_problem_and_others_load(server):
    server.serve_bytes("surrogate", b'[{"id": 1, "title": "\\ud800"}, {"id": 2}]', content_type=JSON)
    counts, lines = fetch(server, "surrogate")
    assert (counts.records, counts.problems) == (1, 1)
    assert lines[0].problem == ("record 1: contains an unpaired surrogate escape (\\ud800-\\udfff), which "
                                "PostgreSQL's jsonb refuses")
    assert lines[0].payload == '{"id": 1, "title": "\\ud800"}'  # the record as received


@pytest.mark.parametrize("records, expected", [
    ([{"user": {"id": 5}, "title": "nested"}], [("5", None)]),
    ([{"user": {"id": "u-6"}}, {"user": {}}, {"user": 7}, {"user.id": 8}],
     [("u-6", None), (None, "record 2: missing id field 'user.id'"),
      (None, "record 3: missing id field 'user.id'"), ("8", None)]),
    ([{"user": {"id": 1.5}}], [(None, "record 1: id field 'user.id' is a number, expected a string or integer")]),
])
def test_dotted_id_path_reaches_into_nested_objects(server, records, expected):
    serve_document(server, "nested", records)
    _, lines = fetch(server, "nested", field_map={**API, "source_id": "user.id"})
    assert [(line.source_id, line.problem) for line in lines] == expected


PEAK_OF_ONE_FETCH = """
import json, os, re, sys, requests
from sluice import api_source, http_client, settings, sources
def peak_mb():  # this process's high-water RSS (ru_maxrss would include the parent's, from before exec)
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) / 1024
before = peak_mb()
with requests.Session() as session, open(os.devnull, "wb") as out:
    counts = api_source.fetch(session, sys.argv[1], settings.DEFAULT_API_MAPPING, out, run_id="r", uri="u",
                              policy=http_client.RetryPolicy(attempts=1), max_pages=1, max_bytes=10**9,
                              records_path=sys.argv[2], pagination=sources.Pagination(**json.loads(sys.argv[3])))
print(counts.records, peak_mb() - before)
"""


@pytest.mark.parametrize("wrap, growth_limit_mb, options", [
    pytest.param(lambda records: records, 16, ("", "{}"), id="array"),
    # a wrapped array is spooled (in memory up to api_source.SPOOL_MEMORY, then on disk) until the object ends
    pytest.param(lambda records: {"meta": {"total": len(records)}, "data": records}, 16 + 8, ("", "{}"),
                 id="wrapped"),
    # at records_path the array is streamed, and a next URL after it is still read
    pytest.param(lambda records: {"meta": {"total": 1}, "data": {"items": records}, "links": {"next": None}}, 16,
                 ("data.items", '{"type": "next_field", "field": "links.next"}'), id="records_path-next-after"),
])
def test_a_large_page_is_parsed_as_a_stream_in_bounded_memory(server, wrap, growth_limit_mb, options):
    """A 40 MB page: the fetching process grows by a bounded amount, not by the page (nor twice the page)."""
    records = [{"id": n, "title": "t" * 200, "userId": n % 10, "body": "b" * 10_000} for n in range(1, 4_001)]
    serve_document(server, "big", wrap(records))
    assert len(server.routes["big"].body) > 40_000_000
    result = subprocess.run([sys.executable, "-c", PEAK_OF_ONE_FETCH, f"{server.url}/big", *options],
                            capture_output=True, text=True, check=True, timeout=120)
    records_staged, growth_mb = result.stdout.split()
    assert int(records_staged) == 4_000
    assert float(growth_mb) < growth_limit_mb


TRICKY_RECORD = ('{"id": %d, "title": "caf\\u00e9 café \\ud83d\\ude00 \\"q\\" \\\\ \\n", "userId": 1.0, '
                 '"floats": [0.1, 1e5, -0.0, 2.5e-3, 12345.6789012345678, 5e-32], "big": 12345678901234567890123456789,'
                 '\n "dup": 1, "dup": [2],\t"nested": {"a": [null, true, false, {}]}, "odd": %s, "lone": "%s"}\r')


@pytest.mark.parametrize("wrap", [b"%s", b'{"data": %s, "meta": {"pages": 1}}', b'{"meta": 1, "rows": %s}'])
def test_each_staged_record_is_its_own_text_over_many_chunks(server, wrap):
    """A page over several 1 MB chunks: each record is staged as the very text the source sent (whitespace, key
    order, duplicate keys, escapes, number spellings), hashed as it is; NaN, Infinity, numbers beyond PostgreSQL's
    numeric and unpaired surrogates are problems, with the record as received."""
    odd = {0: "NaN", 1: "1E400", 2: "-Infinity", 3: "1e131072", 4: "0e-16384", 5: "1e-400"}
    refused = {0: "contains NaN or Infinity, which JSON does not allow",
               2: "contains NaN or Infinity, which JSON does not allow",
               3: "number 1e131072 is beyond PostgreSQL's numeric range",
               4: "number 0e-16384 is beyond PostgreSQL's numeric range"}
    texts = [(TRICKY_RECORD % (n, odd.get(n % 97, "1"), "\\ud800" if n % 89 == 0 else "x")).rstrip("\r")
             for n in range(1, 9001)]
    body = wrap % ("[\n" + ",\r\n".join(texts) + "\n]").encode()
    assert len(body) > 2 * http_client.CHUNK_BYTES
    server.serve_bytes("tricky", body, content_type=JSON)
    out = io.BytesIO()
    with requests.Session() as session:
        counts = api_source.fetch(session, f"{server.url}/tricky", API, out, run_id="run-1", uri="file:///s",
                                  policy=POLICY, max_pages=1, max_bytes=100_000_000)
    lines = staged.decode(out.getvalue())
    assert len(lines) == len(texts) and counts.records + counts.problems == len(texts)
    for n, (line, text) in enumerate(zip(lines, texts), start=1):
        if n % 97 in refused:
            assert (line.problem, line.payload) == (f"record {n}: {refused[n % 97]}", text)
        elif n % 89 == 0:
            assert line.problem.startswith(f"record {n}: contains an unpaired surrogate escape")
        else:
            assert (line.problem, line.text) == (None, text)
            assert line.content_hash == hashlib.md5(text.encode()).hexdigest()
    assert counts.problems == sum(1 for n in range(1, 9001) if n % 97 in refused or n % 89 == 0) > 300
