"""GET /data and /data/<source>/<source_id> on a real PostgreSQL: filters, search, pages, cursors, ETags."""

from datetime import timedelta

import psycopg
import pytest
from webapp_fixtures import (BASE_TIME, catalog, insert_checkpoint, insert_records, make_app,  # noqa: F401
                             newest_first, record)

from webapp import create_app, db


@pytest.fixture(scope="module")
def rows(make_database):
    url = make_database()
    return url, insert_records(url, catalog(25))


@pytest.fixture(scope="module")
def client(rows):
    app = create_app({"AUTH": "none", "DATABASE_URL": rows[0], "TESTING": True})
    yield app.test_client()
    db.warehouse(app).close()


def ids(rows) -> list[int]:
    return [row["id"] for row in rows]


def walk_pages(client, query: str, page_size: int) -> list[dict]:
    """Every page from 1 until has_more is false."""
    seen, page = [], 1
    while True:
        body = client.get(f"/data?{query}&page={page}&page_size={page_size}").json
        seen.extend(body["data"])
        if not body["has_more"]:
            return seen
        page += 1


def walk_cursor(client, query: str, page_size: int) -> list[dict]:
    """Every page by following next_cursor from the first page."""
    body = client.get(f"/data?{query}&page_size={page_size}").json
    seen = list(body["data"])
    while body["has_more"]:
        body = client.get(f"/data?{query}&page_size={page_size}&cursor={body['next_cursor']}").json
        assert body["page"] is None
        seen.extend(body["data"])
    assert body["next_cursor"] is None
    return seen


def test_first_page_has_defaults_and_full_items(client, rows):
    response = client.get("/data")
    assert response.status_code == 200
    body = response.json
    expected = newest_first(rows[1])
    assert {key: body[key] for key in ("total", "page", "page_size", "has_more")} == {
        "total": 25, "page": 1, "page_size": 10, "has_more": True}
    assert ids(body["data"]) == ids(expected[:10])
    newest = expected[0]
    assert body["data"][0] == {
        "id": newest["id"], "source": newest["source"], "source_id": newest["source_id"], "name": newest["name"],
        "value": newest["value"], "description": newest["description"],
        "created_at": newest["created_at"].isoformat(), "updated_at": newest["updated_at"].isoformat(),
        "deleted_at": None, "attributes": {}}


@pytest.mark.parametrize("page, page_size, expected_slice, has_more", [
    (1, 25, slice(0, 25), False),
    (3, 10, slice(20, 25), False),  # last page, partly filled
    (2, 12, slice(12, 24), True),
    (3, 12, slice(24, 25), False),
    (4, 10, slice(0, 0), False),  # just past the end
    (9999, 100, slice(0, 0), False),  # far past the end
    (1, 100, slice(0, 25), False),
])
def test_pages(client, rows, page, page_size, expected_slice, has_more):
    body = client.get(f"/data?page={page}&page_size={page_size}").json
    assert ids(body["data"]) == ids(newest_first(rows[1])[expected_slice])
    assert (body["has_more"], body["total"], body["page"], body["page_size"]) == (has_more, 25, page, page_size)
    assert (body["next_cursor"] is not None) == has_more


def test_ties_in_updated_at_are_ordered_by_id_descending(client, rows):
    data = client.get("/data?page_size=100").json["data"]
    keys = [(item["updated_at"], item["id"]) for item in data]
    assert keys == sorted(keys, reverse=True)
    assert len({item["updated_at"] for item in data}) < len(data)  # the fixture really has ties


@pytest.mark.parametrize("query", [
    "", "source=api", "source=csv", "search=item 1", "updated_since=2024-05-01T12:04:00Z"])
@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 100])
def test_cursor_and_page_walks_visit_every_row_once_in_order(client, query, page_size):
    by_page = walk_pages(client, query, page_size)
    by_cursor = walk_cursor(client, query, page_size)
    assert ids(by_cursor) == ids(by_page)
    assert len(set(ids(by_cursor))) == len(by_cursor) == client.get(f"/data?{query}").json["total"]


def test_cursor_walk_is_stable_when_newer_rows_arrive(database_url):
    url = database_url
    rows = insert_records(url, catalog(9))
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    try:
        client = app.test_client()
        first = client.get("/data?page_size=4").json
        insert_records(url, [record(name="brand new", updated_at=BASE_TIME + timedelta(days=1))])
        second = client.get(f"/data?page_size=4&cursor={first['next_cursor']}").json
        third = client.get(f"/data?page_size=4&cursor={second['next_cursor']}").json
    finally:
        db.warehouse(app).close()
    assert ids(first["data"] + second["data"] + third["data"]) == ids(newest_first(rows))
    assert third["has_more"] is False


@pytest.mark.parametrize("query, expected", [
    ("source=api", lambda row: row["source"] == "api"),
    ("source=csv", lambda row: row["source"] == "csv"),
    ("updated_since=2024-05-01T12:05:00Z", lambda row: row["updated_at"] >= BASE_TIME + timedelta(minutes=5)),
    ("updated_since=2024-05-01T14:05:00%2B02:00", lambda row: row["updated_at"] >= BASE_TIME + timedelta(minutes=5)),
    ("updated_since=2024-05-01T12:05:00", lambda row: row["updated_at"] >= BASE_TIME + timedelta(minutes=5)),
    ("source=csv&updated_since=2024-05-01T12:05:00Z",
     lambda row: row["source"] == "csv" and row["updated_at"] >= BASE_TIME + timedelta(minutes=5)),
    ("search=ITEM 2", lambda row: "item 2" in row["name"].lower()),
    ("search=entry 1&source=api", lambda row: "entry 1" in row["description"] and row["source"] == "api"),
    ("updated_since=2030-01-01T00:00:00Z", lambda row: False),
])
def test_filters(client, rows, query, expected):
    body = client.get(f"/data?{query}&page_size=100").json
    wanted = [row for row in newest_first(rows[1]) if expected(row)]
    assert ids(body["data"]) == ids(wanted)
    assert body["total"] == len(wanted)


@pytest.mark.parametrize("mode", ["exact", "estimated", "none"])
def test_count_modes(client, rows, mode):
    with psycopg.connect(rows[0], autocommit=True) as conn:
        conn.execute("analyze normalized_data")  # fresh statistics make the planner's estimate exact here
    body = client.get(f"/data?count={mode}&page_size=5").json
    assert body["total"] == {"exact": 25, "estimated": 25, "none": None}[mode]
    assert len(body["data"]) == 5 and body["has_more"] is True


def test_estimated_count_with_a_filter_is_a_number(client):
    total = client.get("/data?count=estimated&source=api").json["total"]
    assert isinstance(total, int) and total >= 0


SEARCH_ROWS = [
    record(source_id="percent", name="100% organic", description="full price"),
    record(source_id="thousand", name="1000 organic"),
    record(source_id="underscore", name="snake_case"),
    record(source_id="x-case", name="snakeXcase"),
    record(source_id="quote", name="O'Brien's pub"),
    record(source_id="double-quote", name='say "hi"'),
    record(source_id="danish", name="Ærø ferry", description="Danish island"),
    record(source_id="backslash", name="path", description=r"C:\temp\file"),
    record(source_id="no-backslash", name="Ctemp"),
    record(source_id="in-description", name="plain", description="a hidden GEM"),
    record(source_id="empty", name=None, description=None),
]


@pytest.fixture(scope="module")
def search_client(make_database):
    url = make_database()
    insert_records(url, [dict(row) for row in SEARCH_ROWS])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    yield app.test_client()
    db.warehouse(app).close()


SEARCH_CASES = [
    ("100%", {"percent"}),  # % is a literal: "1000 organic" does not match
    ("%", {"percent"}),
    ("e_c", {"underscore"}),  # _ is a literal: "snakeXcase" does not match
    ("_", {"underscore"}),
    (r"\temp", {"backslash"}),  # \ is a literal: "Ctemp" does not match
    ("\\", {"backslash"}),
    ("o'brien", {"quote"}),
    ("'", {"quote"}),
    ('"hi"', {"double-quote"}),
    ("ærø", {"danish"}),
    ("ÆRØ FERRY", {"danish"}),
    ("gem", {"in-description"}),  # found through the description alone
    ("organic", {"percent", "thousand"}),
    ("nothing like this", set()),
]


@pytest.mark.parametrize("search, expected", SEARCH_CASES)
def test_search_takes_user_input_literally(search_client, search, expected):
    response = search_client.get("/data", query_string={"search": search, "page_size": 100})
    assert response.status_code == 200
    assert {item["source_id"] for item in response.json["data"]} == expected
    assert response.json["total"] == len(expected)


def test_search_works_without_pg_trgm(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop extension if exists pg_trgm cascade")
    insert_records(database_url, [dict(row) for row in SEARCH_ROWS])
    app = create_app({"AUTH": "none", "DATABASE_URL": database_url})
    try:
        client = app.test_client()
        for search, expected in SEARCH_CASES:
            data = client.get("/data", query_string={"search": search, "page_size": 100}).json["data"]
            assert {item["source_id"] for item in data} == expected, search
    finally:
        db.warehouse(app).close()


BAD_QUERIES = [
    ("page=0", "page"),
    ("page=-1", "page"),
    ("page=abc", "page"),
    ("page=1.5", "page"),
    ("page=10001", "page"),
    ("page_size=0", "page_size"),
    ("page_size=101", "page_size"),
    ("page_size=", "page_size"),
    ("source=xml", "source"),
    ("source=API", "source"),
    ("search=", "search"),
    (f"search={'x' * 201}", "search"),
    ("updated_since=yesterday", "updated_since"),
    ("updated_since=2024-13-01T00:00:00Z", "updated_since"),
    ("updated_since=2024-05-01T12:00:00 02:00", "updated_since"),  # an unencoded + became a space
    ("cursor=not-a-cursor", "cursor"),
    ("cursor=", "cursor"),
    ("cursor=WyJ4IiwgMV0", "cursor"),  # base64url of ["x", 1]: no datetime
    ("cursor=WyIyMDI0LTA1LTAxVDEyOjAwOjAwIiwxXQ", "cursor"),  # a naive datetime
    ("cursor=WyIyMDI0LTA1LTAxVDEyOjAwOjAwKzAwOjAwIiwxZTk5OV0", "cursor"),  # a huge id
    ("count=maybe", "count"),
    ("colour=red", "colour"),
    ("page=1&page=2", "page"),
    ("source=api&source=csv", "source"),
]


@pytest.mark.parametrize("query, field", BAD_QUERIES)
def test_invalid_parameters_are_a_400_naming_the_field(client, query, field):
    response = client.get(f"/data?{query}")
    assert response.status_code == 400
    body = response.json
    assert body["code"] == 400 and body["status"] == "Bad Request"
    assert field in body["errors"] and field in body["message"]
    assert all(isinstance(message, str) for message in body["errors"][field])


def test_cursor_together_with_page_is_a_400(client):
    cursor = client.get("/data?page_size=2").json["next_cursor"]
    response = client.get(f"/data?cursor={cursor}&page=2")
    assert response.status_code == 400
    assert "page" in response.json["errors"]["cursor"][0]


def test_cursor_survives_the_default_page_size_and_other_filters(client, rows):
    cursor = client.get("/data?page_size=3&source=api").json["next_cursor"]
    body = client.get(f"/data?cursor={cursor}&source=api&page_size=3").json
    api_rows = [row for row in newest_first(rows[1]) if row["source"] == "api"]
    assert ids(body["data"]) == ids(api_rows[3:6])


def test_etag_and_not_modified(database_url):
    insert_records(database_url, catalog(3))
    app = create_app({"AUTH": "none", "DATABASE_URL": database_url})
    try:
        client = app.test_client()
        first = client.get("/data")
        etag = first.headers["ETag"]
        assert etag.startswith('W/"')  # weak: the body's watermark is new on every request, the records are not
        assert first.headers["Cache-Control"] == "no-cache"
        again = client.get("/data", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.data == b""
        assert client.get("/data?page_size=2", headers={"If-None-Match": etag}).status_code == 200
        insert_records(database_url, [record(name="changed", updated_at=BASE_TIME + timedelta(days=1))])
        changed = client.get("/data", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["ETag"] != etag
    finally:
        db.warehouse(app).close()


def test_head_has_no_body(client):
    response = client.head("/data")
    assert response.status_code == 200 and response.data == b""


@pytest.mark.parametrize("source_id", ["item-5", "with/slash", "spaces and ünïcode", "a:b+c"])
def test_one_record_with_lineage(make_app, database_url, source_id):
    (row,) = insert_records(database_url, [record(source="csv", source_id=source_id, name="one", value=2.5,
                                                  first_seen_run_id="run-a", last_changed_run_id="run-b")])
    client = make_app(database_url).test_client()
    response = client.get(f"/data/csv/{source_id}")
    assert response.status_code == 200
    assert response.json == {
        "id": row["id"], "source": "csv", "source_id": source_id, "name": "one", "value": 2.5, "description": None,
        "created_at": BASE_TIME.isoformat(), "updated_at": BASE_TIME.isoformat(),
        "deleted_at": None, "first_seen_run_id": "run-a", "last_changed_run_id": "run-b", "deleted_run_id": None, "attributes": {}}
    assert client.get(f"/data/api/{source_id}").status_code == 404  # same id, other source


@pytest.mark.parametrize("url, status, field", [
    ("/data/api/missing", 404, None),
    ("/data/x-ml/item-1", 400, "source"),
    ("/data/API/item-1", 400, "source"),
])
def test_record_errors(client, url, status, field):
    response = client.get(url)
    assert response.status_code == status
    assert response.json["code"] == status
    if field:
        assert field in response.json["errors"]
    else:
        assert "missing" in response.json["message"]


def test_a_record_of_a_source_the_warehouse_does_not_know_is_a_404(client):
    response = client.get("/data/xml/item-1")
    assert response.status_code == 404 and response.json["message"] == "no xml record with source_id 'item-1'"


def test_a_source_request_is_one_query_once_the_worker_knows_the_sources_and_a_new_source_shows_at_once(
        make_database, monkeypatch):
    url = make_database()
    insert_records(url, catalog(4))
    for source in ("api", "csv"):
        insert_checkpoint(url, source, 2)
    app = create_app({"AUTH": "none", "DATABASE_URL": url, "TESTING": True})
    client = app.test_client()
    names = []
    real = db.fetch_all

    def recording(name, *args, **kwargs):  # the real query runs: only its name is noted
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(db, "fetch_all", recording)
    try:
        assert client.get("/data?source=api").json["total"] == 2
        assert names == ["known_sources", "source_fields", "data_answer"]  # the worker's first look
        names.clear()
        assert client.get("/data?source=csv&page=2&page_size=1").json["total"] == 2
        assert names == ["data_answer"]  # one round trip: the sources and their fields come from the copy
        # a source loaded a moment ago is not refused from a stale copy: an unknown name is read again
        insert_records(url, [record(source="late", source_id="l1", name="Late", value=1.0, description="new",
                                    updated_at=BASE_TIME)])
        insert_checkpoint(url, "late", 1)
        names.clear()
        assert client.get("/data?source=late").json["total"] == 1
        assert names == ["known_sources", "source_fields", "data_answer"]
        refused = client.get("/data?source=nosuch")
        assert refused.status_code == 400
        assert refused.json["errors"] == {
            "source": ["Unknown source 'nosuch'; the known sources are: api, csv, late."]}
    finally:
        db.warehouse(app).close()
