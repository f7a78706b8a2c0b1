"""Source options real feeds need, each a field of the Source value, read end to end from a loopback server
through the kind's stage() entry point: CSV delimiter, encoding and gzip; API records_path and pagination."""

import dataclasses
import gzip
import io
import json
import os

import pytest
import requests

from sluice import settings, sources, staging
from sluice.errors import InvalidSource, SourceError
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from tests import staged

CSV_MAPPING = settings.DEFAULT_CSV_MAPPING
API_MAPPING = settings.DEFAULT_API_MAPPING


@pytest.fixture
def server(home):
    return home


@pytest.fixture(autouse=True)
def limits(monkeypatch):
    monkeypatch.setenv("SLUICE_HTTP_ATTEMPTS", "2")
    monkeypatch.setenv("SLUICE_MAX_PAGES", "20")
    monkeypatch.delenv("SLUICE_API_ALLOWED_HOSTS", raising=False)


def csv_source(endpoint, **options):
    return sources.Source(name="items", kind="csv", conn_id="etl_items", endpoint=endpoint, mapping=CSV_MAPPING,
                          **options)


def api_source(endpoint, **options):
    return sources.Source(name="posts", kind="api", conn_id="etl_posts", endpoint=endpoint, mapping=API_MAPPING,
                          **options)


def stage(server, source, tmp_path, since=None):
    """The source read through its kind's stage(): (counts, staged lines)."""
    out = io.BytesIO()
    with requests.Session() as session:
        request = sources.FetchRequest(session=session, url=f"{server.url}/{source.endpoint}", run_id="run-1",
                                       uri="file:///s", settings=settings.load(), since=since,
                                       workdir=tmp_path / "downloads")
        counts = source.reader().stage(source, request, out)
    return counts, staged.decode(out.getvalue())


def stage_error(server, source, tmp_path, **kwargs) -> str:
    with pytest.raises(SourceError) as failure:
        stage(server, source, tmp_path, **kwargs)
    downloads = tmp_path / "downloads"
    # nothing half-downloaded is left (the folder's marker stays with it, for the sweep)
    assert not downloads.exists() or os.listdir(downloads) == [staging.RUN_FOLDER_MARKER]
    return str(failure.value)


def row(source_id, name="w", value="1.5", description="plain"):
    return {"id": source_id, "name": name, "value": value, "description": description}


# CSV: delimiter

@pytest.mark.parametrize("delimiter", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_a_csv_with_another_delimiter_loads_with_quoted_delimiters_and_commas_kept(server, tmp_path, delimiter):
    d = delimiter
    lines = ["id,name,value,description".replace(",", d), f'1{d}"Smith{d} Jane"{d}1,5{d}plain, with commas',
             f"2{d}w{d}1.5{d}plain", f"3{d}short"]
    server.serve_bytes("items.csv", ("\n".join(lines) + "\n").encode())

    counts, staged_lines = stage(server, csv_source("items.csv", delimiter=d), tmp_path)

    assert (counts.records, counts.problems) == (2, 1)
    assert [line.data for line in staged.records(staged_lines)] == [
        row("1", f"Smith{d} Jane", "1,5", "plain, with commas"), row("2")]
    problem, = staged.problems(staged_lines)
    assert (problem.problem, problem.payload) == ("line 4: expected 4 fields, got 2", f"3{d}short")


def test_a_comma_file_read_with_a_semicolon_delimiter_fails_on_its_header(server, tmp_path):
    server.serve_bytes("items.csv", b"id,name,value,description\n1,w,1.5,plain\n")
    message = stage_error(server, csv_source("items.csv", delimiter=";"), tmp_path)
    assert "the header lacks column(s) named in csv_mapping: id, name, value, description" in message


def test_an_open_quote_with_a_semicolon_delimiter_costs_only_its_own_line(server, tmp_path):
    body = b'id;name;value;description\n1;w;1.5;plain\n2;"open;1.5;plain\n3;w;1.5;plain\n4;w;"a;b";plain\n'
    server.serve_bytes("items.csv", body)

    counts, lines = stage(server, csv_source("items.csv", delimiter=";"), tmp_path)

    assert [line.source_id for line in staged.records(lines)] == ["1", "3", "4"]
    assert staged.records(lines)[2].data == row("4", "w", "a;b")
    problem, = staged.problems(lines)
    assert problem.payload == '2;"open;1.5;plain' and problem.problem.startswith("line 3: ")


# CSV: encoding

def test_a_latin1_csv_decodes_as_latin1(server, tmp_path):
    server.serve_bytes("items.csv", "id,name,value,description\n1,café,1.5,Zürich\n".encode("latin-1"))
    counts, lines = stage(server, csv_source("items.csv", encoding="latin-1"), tmp_path)
    assert [line.data for line in lines] == [row("1", "café", "1.5", "Zürich")]


def test_bytes_the_encoding_does_not_decode_quarantine_their_row_naming_the_encoding(server, tmp_path):
    # 0x81 is not a character in windows-1252; 0xe9 is é
    content = b"id,name,value,description\n1,caf\xe9,1.5,plain\n2,bad\x81,1.5,plain\n3,w,1.5,plain\n"
    server.serve_bytes("items.csv", content)

    counts, lines = stage(server, csv_source("items.csv", encoding="cp1252"), tmp_path)

    assert (counts.records, counts.problems) == (2, 1)
    assert [line.data for line in staged.records(lines)] == [row("1", "café"), row("3")]
    assert (lines[1].source_id, lines[1].problem) == ("2", "line 3: contains bytes that are not valid CP1252")
    assert "bad\\x81" in lines[1].payload


def test_a_utf16_csv_with_its_byte_order_mark_loads(server, tmp_path):
    server.serve_bytes("items.csv", "id,name,value,description\r\n1,Ærø,1.5,plain\r\n".encode("utf-16"))
    _, lines = stage(server, csv_source("items.csv", encoding="utf-16"), tmp_path)
    assert [line.data for line in lines] == [row("1", "Ærø")]


# CSV: gzip

CSV_BODY = sample_data.csv_bytes(40)
EXPECTED_RECORDS = len([cells for cells in sample_data.csv_rows(40) if len(cells) == 4 and cells[0]])


@pytest.mark.parametrize("path, content_type", [
    ("items.csv.gz", "application/octet-stream"),
    ("export/items.GZ", "text/plain"),
    ("export", "application/gzip"),
    ("export", "application/x-gzip; charset=binary"),
])
def test_a_gzip_file_is_decompressed_as_it_downloads(server, tmp_path, path, content_type):
    server.serve_bytes(path, gzip.compress(CSV_BODY), content_type=content_type)
    counts, lines = stage(server, csv_source(path), tmp_path)
    assert counts.records == EXPECTED_RECORDS and counts.bytes == len(CSV_BODY)
    assert os.listdir(tmp_path / "downloads") == [staging.RUN_FOLDER_MARKER]  # the download is gone


def test_concatenated_gzip_members_are_one_file(server, tmp_path):
    half = CSV_BODY.index(b"\n", len(CSV_BODY) // 2) + 1
    server.serve_bytes("items.csv.gz", gzip.compress(CSV_BODY[:half]) + gzip.compress(CSV_BODY[half:]))
    counts, _ = stage(server, csv_source("items.csv.gz"), tmp_path)
    assert counts.records == EXPECTED_RECORDS


def test_a_gzip_transfer_encoding_on_a_gz_path_is_not_decompressed_twice(server, tmp_path):
    server.serve_bytes("items.csv.gz", b"")
    server.add_faults("items.csv.gz", Fault(200, body=gzip.compress(CSV_BODY),
                                            headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"}))
    counts, _ = stage(server, csv_source("items.csv.gz"), tmp_path)
    assert counts.records == EXPECTED_RECORDS


def test_a_gzip_bomb_over_max_bytes_fails_and_stages_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_MAX_BYTES", str(1_000_000))
    bomb = gzip.compress(b"id,name,value,description\n" + b"1,w,1.5,plain\n" * 5_000_000)  # 70 MB in ~70 KB
    assert len(bomb) < 1_000_000
    server.serve_bytes("items.csv.gz", bomb)
    assert stage_error(server, csv_source("items.csv.gz"), tmp_path) == (
        f"items: {server.url}/items.csv.gz: decompressed, it exceeds SLUICE_MAX_BYTES (1000000 bytes)")


@pytest.mark.parametrize("body, problem", [
    (CSV_BODY, "not a valid gzip file (Error -3 while decompressing data: incorrect header check)"),
    (gzip.compress(CSV_BODY)[:-20], "the gzip file is truncated (it ends in the middle of its data)"),
    (gzip.compress(CSV_BODY)[:200], "the gzip file is truncated (it ends in the middle of its data)"),
], ids=["not-gzip", "no-trailer", "cut-in-the-data"])
def test_a_corrupt_or_truncated_gzip_fails_the_source_clearly(server, tmp_path, body, problem):
    server.serve_bytes("items.csv.gz", body)
    assert stage_error(server, csv_source("items.csv.gz"), tmp_path) == f"items: {server.url}/items.csv.gz: {problem}"


# API: records_path and next_field

def serve_pages(server, pages: dict):
    """Serve each path's JSON document; `{url}` in a document is the server's base URL."""
    for path, document in pages.items():
        text = json.dumps(document).replace("{url}", server.url)
        server.serve_bytes(path, text.encode(), content_type="application/json")


POSTS = sample_data.posts(7)


def drf_pages(next_first: bool):
    """Django REST framework's shape: count, next, previous, results; `next` before or after the results."""
    def page(records, next_url):
        fields = {"count": 7, "next": next_url, "previous": None}
        return {**fields, "results": records} if next_first else {"results": records, **fields}
    return {"drf": page(POSTS[:3], "{url}/drf?page=2"), "drf2": page(POSTS[3:6], "/drf3"),
            "drf3": page(POSTS[6:], None)}


@pytest.mark.parametrize("records_path", ["results", ""], ids=["records_path", "found"])
@pytest.mark.parametrize("next_first", [True, False], ids=["next-first", "next-last"])
def test_a_next_url_in_the_body_is_followed(server, tmp_path, records_path, next_first):
    pages = drf_pages(next_first)
    pages["drf"] = pages["drf"] | {"next": "{url}/drf2"}
    serve_pages(server, pages)
    source = api_source("drf", records_path=records_path, pagination={"type": "next_field", "field": "next"})

    counts, lines = stage(server, source, tmp_path)

    assert (counts.records, counts.problems, counts.pages) == (7, 0, 3)
    assert [line.data for line in lines] == POSTS
    assert [path for path, _ in server.requests] == ["/drf", "/drf2", "/drf3"]


@pytest.mark.parametrize("links_first", [True, False], ids=["links-first", "links-last"])
def test_records_and_next_at_nested_paths(server, tmp_path, links_first):
    def page(records, next_url):
        parts = [("links", {"self": "x", "next": next_url}), ("meta", {"items": [1, 2]}),
                 ("data", {"total": 7, "items": records, "other": [0]})]
        return dict(parts if links_first else parts[::-1])
    serve_pages(server, {"nested": page(POSTS[:4], "nested2"), "nested2": page(POSTS[4:], None)})
    source = api_source("nested", records_path="data.items", pagination={"type": "next_field", "field": "links.next"})

    counts, lines = stage(server, source, tmp_path)

    assert (counts.records, counts.pages) == (7, 2)
    assert [line.data for line in lines] == POSTS


def test_records_path_without_next_field_keeps_link_pagination(server, tmp_path):
    serve_pages(server, {"wrapped": {"data": {"items": POSTS[:2]}}, "wrapped2": {"data": {"items": POSTS[2:]}}})
    server.add_faults("wrapped", Fault(200, body=json.dumps({"data": {"items": POSTS[:2]}}).encode(),
                                       headers={"Content-Type": "application/json", "Link": '</wrapped2>; rel="next"'}))
    counts, lines = stage(server, api_source("wrapped", records_path="data.items"), tmp_path)
    assert (counts.records, counts.pages) == (7, 2)
    assert [line.data for line in lines] == POSTS


@pytest.mark.parametrize("body, problem", [
    (b'[{"id": 1}]', "expected a JSON object holding records_path 'data.items', got a list"),
    (b'{"data": {"rows": []}}', "no array of records at records_path 'data.items'"),
    (b'{"data": [{"items": []}]}', "no array of records at records_path 'data.items'"),
    (b'{"data": {"items": {"id": 1}}}', "the value at records_path is an object, not one array of records"),
    (b'{"data": {"items": [], "items": []}}', "the value at records_path is repeated, not one array of records"),
])
def test_a_page_without_the_array_at_records_path_fails_naming_it(server, tmp_path, body, problem):
    server.serve_bytes("odd", body, content_type="application/json")
    message = stage_error(server, api_source("odd", records_path="data.items"), tmp_path)
    assert message == f"posts: {server.url}/odd: {problem}"


def test_a_next_field_to_another_origin_is_refused_before_any_request_goes_there(server, other, tmp_path):
    serve_pages(server, {"drf": {"results": POSTS[:2], "next": f"{other.url}/drf2"}})
    serve_pages(other, {"drf2": {"results": POSTS[2:], "next": None}})
    source = api_source("drf", pagination={"type": "next_field", "field": "next"})

    message = stage_error(server, source, tmp_path)

    assert message == (f"posts: {server.url}/drf: next_field 'next' points to {other.url}/drf2, which is not on the "
                       f"connection's origin ({server.url}); not followed. List its host[:port] in "
                       "SLUICE_API_ALLOWED_HOSTS to allow it (it then gets none of the connection's credentials)")
    assert other.requests == []


def test_a_next_field_to_an_allowed_host_is_followed(server, other, tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_API_ALLOWED_HOSTS", other.url.removeprefix("http://"))
    serve_pages(server, {"drf": {"results": POSTS[:2], "next": f"{other.url}/drf2"}})
    serve_pages(other, {"drf2": {"results": POSTS[2:], "next": None}})
    counts, _ = stage(server, api_source("drf", pagination={"type": "next_field", "field": "next"}), tmp_path)
    assert (counts.records, counts.pages) == (7, 2)


@pytest.mark.parametrize("pages, problem", [
    ({"loop": {"results": POSTS, "next": "/loop2"}, "loop2": {"results": [], "next": "/loop"}},
     "{url}/loop2: pagination loops back to {url}/loop"),
    ({"loop": {"results": POSTS, "next": 7}}, "{url}/loop: next_field 'next' is an integer, expected a URL or null"),
])
def test_a_bad_next_field_fails_the_source(server, tmp_path, pages, problem):
    serve_pages(server, pages)
    message = stage_error(server, api_source("loop", pagination={"type": "next_field", "field": "next"}), tmp_path)
    assert message == "posts: " + problem.replace("{url}", server.url)


# API: page_param and offset_param

@pytest.mark.parametrize("kind, param", [("page_param", "_page"), ("offset_param", "_start")])
@pytest.mark.parametrize("total, pages", [(12, 3), (10, 3), (0, 1)], ids=["short-last", "empty-last", "empty"])
def test_counted_pages_stop_on_a_short_or_empty_page(server, tmp_path, kind, param, total, pages):
    posts = sample_data.posts(total)
    server.serve_json("counted", posts)
    pagination = {"type": kind, "param": param, "page_size": 5, "size_param": "_limit"}

    counts, lines = stage(server, api_source("counted", pagination=pagination), tmp_path)

    assert (counts.records, counts.pages) == (total, pages)
    assert [line.data for line in lines] == posts
    firsts = [1, 2, 3] if kind == "page_param" else [0, 5, 10]
    assert [path for path, _ in server.requests] == [f"/counted?{param}={n}&_limit=5" for n in firsts[:pages]]


def test_counted_pages_carry_the_since_param_on_every_request(server, tmp_path):
    server.serve_json("counted", sample_data.posts(12))
    source = api_source("counted", since_param="id_gte", pagination={"type": "page_param", "param": "_page",
                                                                     "page_size": 3, "size_param": "_limit"})
    counts, lines = stage(server, source, tmp_path, since="4")
    assert [line.source_id for line in lines] == [str(n) for n in range(4, 13)]
    assert [path for path, _ in server.requests] == [f"/counted?id_gte=4&_page={n}&_limit=3" for n in (1, 2, 3, 4)]


def test_a_server_that_ignores_the_page_param_fails_at_its_first_repeated_page(server, tmp_path):
    # before issue #22 such a server was read until SLUICE_MAX_PAGES; the repeated page says why at once
    server.serve_bytes("stuck", json.dumps(POSTS[:5]).encode(), content_type="application/json")
    source = api_source("stuck", pagination={"type": "page_param", "param": "page", "page_size": 5})
    assert stage_error(server, source, tmp_path) == (
        f"posts: {server.url}/stuck?page=2: page 2 repeats page 1 (the same 5 records): the server ignores the "
        "'page' parameter; stopped, nothing of the read is loaded")


# Validation, naming the source and the field

@pytest.mark.parametrize("kind, options, message", [
    ("csv", {"delimiter": ";;"}, "delimiter must be one character other than a quote or a line break, got ';;'"),
    ("csv", {"delimiter": '"'}, "delimiter must be one character other than a quote or a line break"),
    ("csv", {"delimiter": ""}, "delimiter must be one character"),
    ("csv", {"encoding": "utf-9"}, "encoding 'utf-9' is not a text encoding Python knows"),
    ("csv", {"encoding": "zlib"}, "encoding 'zlib' is not a text encoding Python knows"),
    ("api", {"delimiter": ";"}, "delimiter applies to csv sources only"),
    ("api", {"encoding": "latin-1"}, "encoding applies to csv sources only"),
    ("csv", {"records_path": "data"}, "records_path applies to api sources only"),
    ("csv", {"pagination": {"type": "next_field", "field": "next"}}, "pagination applies to api sources only"),
    ("api", {"records_path": "data..items"}, "records_path must be a dotted path like data.items, got 'data..items'"),
    ("api", {"pagination": {"type": "cursor"}},
     "pagination: type 'cursor' is not one of link, next_field, page_param, offset_param"),
    ("api", {"pagination": "next"}, "pagination: must be an object with a type, got 'next'"),
    ("api", {"pagination": {"type": "page_param", "param": "page"}}, "pagination: type 'page_param' needs page_size"),
    ("api", {"pagination": {"type": "offset_param", "page_size": 10}}, "pagination: type 'offset_param' needs param"),
    ("api", {"pagination": {"type": "page_param", "param": "p", "page_size": 0}},
     "pagination.page_size must be a positive integer, got 0"),
    ("api", {"pagination": {"type": "next_field"}}, "pagination: type 'next_field' needs field"),
    ("api", {"pagination": {"type": "next_field", "field": "next", "param": "p"}},
     "pagination: type 'next_field' takes no param (it takes field)"),
    ("api", {"pagination": {"type": "next_field", "field": " "}}, "pagination.field must be a non-empty string"),
    ("api", {"pagination": {"type": "link", "page_size": 5}}, "pagination: type 'link' takes no page_size (it takes nothing but its type)"),
])
def test_an_invalid_option_fails_naming_the_source_and_field(kind, options, message):
    with pytest.raises(InvalidSource) as failure:
        sources.Source(name="orders", kind=kind, conn_id="etl", endpoint="e", mapping={"source_id": "id"}, **options)
    assert str(failure.value).startswith(f"source 'orders': {message}")


def test_options_default_to_todays_behaviour():
    source = sources.seed("api", endpoint="posts")
    assert (source.delimiter, source.encoding, source.records_path) == (",", "utf-8", "")
    assert source.pagination == sources.Pagination(type="link")
    given = api_source("p", pagination={"type": "offset_param", "param": "offset", "page_size": 50})
    assert given.pagination == sources.Pagination(type="offset_param", param="offset", page_size=50)


@pytest.mark.parametrize("source", [
    csv_source("items.csv.gz", delimiter="\t", encoding="cp1252"),
    api_source("posts", records_path="data.items", pagination={"type": "next_field", "field": "links.next"}),
    api_source("posts", pagination={"type": "page_param", "param": "page", "page_size": 100, "size_param": "per"}),
], ids=["csv", "api-next-field", "api-page-param"])
def test_a_source_with_options_round_trips_through_json(source):
    """As a mapped task's argument or an XCom would carry it: every field, options included, comes back."""
    assert sources.Source(**json.loads(json.dumps(dataclasses.asdict(source)))) == source
