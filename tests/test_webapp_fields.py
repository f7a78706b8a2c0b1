"""/data over declared fields on a real PostgreSQL: fields=, filters (PostgREST syntax), order with its keyset
cursor, the per-source OpenAPI schemas, and why a record is missing (its rejection)."""

import base64
import json
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import quote

import psycopg2
import pytest
from webapp_fixtures import (BASE_TIME, closed_port_url, declare_fields, insert_checkpoint,  # noqa: F401
                             insert_records, insert_rejects, insert_run, make_app, record)

from bench import api_fields
from sluice import queries
from webapp import attributes, create_app, db, exact_json, source_catalog
from webapp.routes_data import filters_clause

CUSTOMER_FIELDS = {"email": "text", "plan": "text", "seats": "integer", "mrr": "numeric", "active": "boolean",
                   "signup": "timestamp", "birthday": "date", "tags": "json", "page": "text"}
SEATS = [5, 10, 10, None, 20, 10, 3, None, 20, 10, 7, 100, None, 5]
BIG = "12345678901234567890.12"  # more digits than a float holds
RUN_ID = "scheduled__2026-01-02T00:00:00+00:00"


def customer(number: int) -> dict:
    """The typed attributes of customer c<number>, as normalize stores them."""
    signup = datetime(2025, 12, 30, 8, tzinfo=timezone.utc) + timedelta(days=number)
    return {
        "email": None if number == 13 else f"c{number}@Example.com",
        "plan": None if number == 12 else ("free", "pro", "team")[number % 3],
        "seats": SEATS[number],
        "mrr": Decimal(BIG) if number == 0 else Decimal(f"{number}.5"),
        "active": number % 2 == 0,
        # the fraction only when it is not zero, as the pipeline writes it
        "signup": signup.strftime("%Y-%m-%dT%H:%M:%S") + (".250000Z" if number == 4 else "Z"),
        "birthday": f"1990-01-{number + 1:02d}",
        "tags": {"n": number, "list": ["a", number]},
        "page": f"p{number}",
    }


CUSTOMERS = {f"c{number}": customer(number) for number in range(len(SEATS))}


@pytest.fixture(scope="module")
def url(make_database):
    url = make_database()
    rows = [record(source="customers", source_id=source_id, updated_at=BASE_TIME + timedelta(minutes=number // 4),
                   attributes=exact_json.dumps(values))
            for number, (source_id, values) in enumerate(CUSTOMERS.items())]
    rows.append(record(source="orders", source_id="o1", attributes='{"total": 0.1, "status": "open"}'))
    rows.append(record(source="api", source_id="a1", name="plain", value=1.0))
    insert_records(url, rows)
    declare_fields(url, "customers", CUSTOMER_FIELDS)
    declare_fields(url, "orders", {"total": "numeric", "status": "text"})
    for source, count in (("customers", len(CUSTOMERS)), ("orders", 1), ("api", 1)):
        insert_checkpoint(url, source, count)
    return url


@pytest.fixture(scope="module")
def app(url):
    app = create_app({"AUTH": "none", "DATABASE_URL": url, "TESTING": True})
    yield app
    db.warehouse(app).close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def ids(body) -> list[str]:
    return [item["source_id"] for item in body["data"]]


def walk(client, query: str, page_size: int) -> list[dict]:
    """Every item by following next_cursor from the first page."""
    body = client.get(f"/data?{query}&page_size={page_size}").json
    items = list(body["data"])
    while body["has_more"]:
        response = client.get(f"/data?{query}&page_size={page_size}&cursor={body['next_cursor']}")
        assert response.status_code == 200, response.json
        body = response.json
        items.extend(body["data"])
    return items


def test_fields_serves_only_those_declared_fields_typed(client):
    response = client.get("/data?source=customers&fields=email,seats,signup&page_size=100")
    assert response.status_code == 200
    items = {item["source_id"]: item["attributes"] for item in response.json["data"]}
    assert items == {source_id: {name: values[name] for name in ("email", "seats", "signup")}
                     for source_id, values in CUSTOMERS.items()}
    assert items["c4"]["signup"] == "2026-01-03T08:00:00.250000Z"


def test_without_fields_each_item_carries_every_declared_field_with_every_digit(client):
    response = client.get("/data?source=customers&page_size=100")
    body = json.loads(response.get_data(), parse_float=Decimal)
    items = {item["source_id"]: item["attributes"] for item in body["data"]}
    assert set(items["c0"]) == set(CUSTOMER_FIELDS)
    assert items["c0"]["mrr"] == Decimal(BIG)  # a JSON number, not a string, and not rounded through a float
    assert items["c3"]["seats"] is None and items["c0"]["tags"] == {"n": 0, "list": ["a", 0]}
    assert items["c0"]["active"] is True and items["c0"]["birthday"] == "1990-01-01"


def test_a_declared_field_the_stored_record_lacks_is_null(client, url):
    declare_fields(url, "orders", {"total": "numeric", "status": "text", "coupon": "text"})
    time.sleep(source_catalog.CACHE_SECONDS)  # what a worker read of the declarations, it trusts this long
    try:
        item = client.get("/data?source=orders").json["data"][0]
        assert item["attributes"] == {"total": 0.1, "status": "open", "coupon": None}
        assert client.get("/data/orders/o1").json["attributes"] == item["attributes"]
    finally:
        declare_fields(url, "orders", {"total": "numeric", "status": "text"})
        time.sleep(source_catalog.CACHE_SECONDS)


def test_across_sources_each_item_carries_its_own(client):
    items = {item["source_id"]: item["attributes"] for item in client.get("/data?page_size=100").json["data"]}
    assert items["o1"] == {"total": 0.1, "status": "open"}
    assert items["a1"] == {}
    assert items["c1"]["plan"] == "pro"


@pytest.mark.parametrize("query, parameter, words", [
    ("fields=email", "fields", ["source="]),
    ("order=seats.desc", "order", ["source="]),
    ("plan=eq.pro", "plan", ["source="]),
    ("source=customers&fields=email,nope", "fields", ["'nope'", "customers", "email, plan, seats"]),
    ("source=customers&order=nope.asc", "order", ["'nope'"]),
    ("source=customers&order=tags.asc", "order", ["'tags'", "json"]),
    ("source=customers&order=seats.up", "order", ["asc", "desc"]),
    ("source=customers&nope=eq.1", "nope", ["'nope'", "not a declared field"]),
    ("source=customers&plan=approx.pro", "plan", ["'approx'"]),
    ("source=customers&plan=pro", "plan", ["operator"]),
    ("source=customers&seats=like.1*", "seats", ["'like'", "integer", "eq, neq"]),
    ("source=customers&active=gt.true", "active", ["'gt'", "boolean"]),
    ("source=customers&tags=eq.1", "tags", ["'eq'", "json"]),
    ("source=customers&seats=gte.ten", "seats", ["'ten'", "integer", "'seats'"]),
    ("source=customers&seats=eq.1.5", "seats", ["'1.5'", "integer"]),
    ("source=customers&mrr=lt.1e", "mrr", ["'1e'", "number"]),
    ("source=customers&mrr=lt.NaN", "mrr", ["'NaN'", "number"]),
    ("source=customers&mrr=lt.1e99999", "mrr", ["'1e99999'", "1e1000"]),
    ("source=customers&email=like.a%00*", "email", ["NUL"]),
    ("source=customers&signup=lt.yesterday", "signup", ["'yesterday'", "timestamp"]),
    ("source=customers&signup=lt.2026-01-01T00:00:00%2B16:00", "signup", ["timestamp"]),
    ("source=customers&birthday=gte.1990-1-1", "birthday", ["'1990-1-1'", "date"]),
    ("source=customers&active=eq.yes", "active", ["'yes'", "boolean"]),
    ("source=customers&plan=is.true", "plan", ["null"]),
    ("source=customers&plan=in.pro", "plan", ["parentheses"]),
    ("source=customers&seats=in.(1,x)", "seats", ["'x'", "integer"]),
    ("source=customers&plan=eq.a%00b", "plan", ["NUL"]),
    ("source=orders&seats=eq.1", "seats", ["orders", "total, status"]),
])
def test_a_bad_field_operator_or_value_is_a_400_naming_it(client, query, parameter, words):
    response = client.get(f"/data?{query}")
    assert response.status_code == 400, response.json
    body = response.json
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 400
    assert parameter in body["message"] and list(body["errors"]) == [parameter]
    message = body["errors"][parameter][0]
    for word in words:
        assert word in message, message


def where(predicate) -> set[str]:
    return {source_id for source_id, values in CUSTOMERS.items() if predicate(values)}


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("query, expected", [
    ("plan=eq.pro", where(lambda c: c["plan"] == "pro")),
    ("plan=neq.pro", where(lambda c: c["plan"] not in ("pro", None))),
    ("plan=in.(free,team)", where(lambda c: c["plan"] in ("free", "team"))),
    ('plan=in.("free",nothing)', where(lambda c: c["plan"] == "free")),
    ("plan=is.null", {"c12"}),
    ("plan=gt.pro", where(lambda c: c["plan"] == "team")),
    ("email=like.c1*", where(lambda c: (c["email"] or "").startswith("c1"))),
    ("email=like.*example.com", set()),
    ("email=ilike.*example.com", where(lambda c: c["email"] is not None)),
    ("email=ilike.C1_@*", {"c10", "c11", "c12"}),
    ("seats=eq.10", where(lambda c: c["seats"] == 10)),
    ("seats=gte.10", where(lambda c: c["seats"] is not None and c["seats"] >= 10)),
    ("seats=lt.10", where(lambda c: c["seats"] is not None and c["seats"] < 10)),
    ("seats=lte.5&seats=gt.3", where(lambda c: c["seats"] == 5)),  # a range: one field twice
    ("seats=neq.10", where(lambda c: c["seats"] not in (10, None))),
    ("seats=in.(3,100)", {"c6", "c11"}),
    ("seats=is.null", where(lambda c: c["seats"] is None)),
    ("seats=eq.10.0", set()),  # an integer field takes integers only: a 400 is tested above; here "10.0" never
    (f"mrr=eq.{BIG}", {"c0"}),
    ("mrr=eq.12345678901234567890.13", set()),
    ("mrr=gt.1e19", {"c0"}),
    ("mrr=lte.2.5", {"c1", "c2"}),
    ("mrr=eq.1.50", {"c1"}),  # numbers compare by value
    ("active=eq.true", where(lambda c: c["active"])),
    ("active=is.false", where(lambda c: not c["active"])),
    ("active=neq.true", where(lambda c: not c["active"])),
    ("signup=lt.2026-01-01", where(lambda c: moment(c["signup"]) < datetime(2026, 1, 1, tzinfo=timezone.utc))),
    ("signup=eq.2026-01-03T08:00:00.25Z", {"c4"}),  # typed, whatever the stored spelling of its fraction
    ("signup=eq.2026-01-03T10:00:00.25%2B02:00", {"c4"}),
    ("signup=gte.2026-01-03T08:00:00.250001Z",
     where(lambda c: moment(c["signup"]) > moment("2026-01-03T08:00:00.25Z"))),
    ("birthday=gte.1990-01-13", {"c12", "c13"}),
    ("birthday=eq.1990-01-02", {"c1"}),
    ("birthday=in.(1990-01-02,1990-01-03)", {"c1", "c2"}),
    ("tags=is.null", set()),
    ("attributes.page=eq.p3", {"c3"}),  # a field named like a parameter of /data
    ("attributes.plan=eq.pro&seats=eq.10", where(lambda c: c["plan"] == "pro" and c["seats"] == 10)),
    ("plan=eq.pro&active=eq.true", where(lambda c: c["plan"] == "pro" and c["active"])),
])
def test_filters(client, query, expected):
    if query == "seats=eq.10.0":
        assert client.get(f"/data?source=customers&{query}").status_code == 400
        return
    response = client.get(f"/data?source=customers&{query}&page_size=100")
    assert response.status_code == 200, response.json
    assert set(ids(response.json)) == expected
    assert response.json["total"] == len(expected)  # count=exact agrees with the rows


def test_page_is_the_parameter_and_attributes_page_the_field(client):
    body = client.get("/data?source=customers&page=2&page_size=5&attributes.page=in.(p1,p2,p3,p4,p5,p6)").json
    assert body["page"] == 2 and body["total"] == 6 and len(body["data"]) == 1


def test_filters_combine_with_the_existing_parameters(client):
    base = "/data?source=customers&plan=eq.pro"
    assert set(ids(client.get(f"{base}&search=nothing").json)) == set()  # the rows have no name or description
    since = (BASE_TIME + timedelta(minutes=2)).isoformat().replace("+", "%2B")
    recent = client.get(f"{base}&updated_since={since}").json
    assert set(ids(recent)) == {f"c{n}" for n in range(8, 14) if CUSTOMERS[f"c{n}"]["plan"] == "pro"}
    assert client.get(f"{base}&count=none").json["total"] is None
    assert client.get(f"{base}&count=estimated").json["total"] >= 0
    assert client.get(f"{base}&include_deleted=true").status_code == 200
    assert client.get(f"{base}&page_size=2").json["has_more"] is True


def python_order(field: str, descending: bool, matching=lambda values: True) -> list[str]:
    """The ids in the API's order: the field's value (nulls last), ties by row id (insertion order here)."""
    numbered = [(number, source_id, values[field]) for number, (source_id, values) in enumerate(CUSTOMERS.items())
                if matching(values)]
    present = sorted((row for row in numbered if row[2] is not None),
                     key=lambda row: (moment(row[2]) if field == "signup" else row[2], row[0]), reverse=descending)
    nulls = sorted((row for row in numbered if row[2] is None), key=lambda row: row[0], reverse=descending)
    return [row[1] for row in present + nulls]


@pytest.mark.parametrize("field", ["seats", "plan", "mrr", "signup", "active", "birthday"])
@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("page_size", [1, 2, 3, 5])
def test_a_cursor_pages_through_ties_and_nulls_in_the_fields_order(client, field, direction, page_size):
    query = f"source=customers&order={field}.{direction}"
    assert [item["source_id"] for item in walk(client, query, page_size)] == python_order(field, direction == "desc")


def test_order_with_filters_and_cursor(client):
    query = "source=customers&order=seats.desc&seats=lt.100&plan=neq.free"
    expected = python_order("seats", True, lambda c: c["seats"] is not None and c["seats"] < 100
                            and c["plan"] not in ("free", None))
    assert [item["source_id"] for item in walk(client, query, 2)] == expected


def test_filters_alone_page_by_cursor_in_the_default_order(client):
    items = walk(client, "source=customers&seats=gte.10", 2)
    assert [item["source_id"] for item in items] == [
        item["source_id"] for item in client.get("/data?source=customers&seats=gte.10&page_size=100").json["data"]]


def cursor_of(client, query: str) -> str:
    return client.get(f"/data?{query}&page_size=2").json["next_cursor"]


@pytest.mark.parametrize("first, second", [
    ("source=customers&order=seats.desc", "source=customers&order=seats.asc"),
    ("source=customers&order=seats.desc", "source=customers&order=mrr.desc"),
    ("source=customers&order=seats.desc", "source=customers&order=seats.desc&plan=eq.pro"),
    ("source=customers&order=seats.desc&plan=eq.pro", "source=customers&order=seats.desc&plan=eq.team"),
    ("source=customers&plan=eq.pro", "source=customers&plan=eq.team"),
    ("source=customers&plan=eq.pro", "source=customers"),
    ("source=customers", "source=customers&order=seats.desc"),
    ("source=customers&order=seats.desc", "source=orders&order=total.desc"),
])
def test_a_cursor_used_with_another_order_or_filter_is_a_400(client, first, second):
    response = client.get(f"/data?{second}&cursor={cursor_of(client, first)}")
    assert response.status_code == 400
    assert "another order or other filters" in response.json["errors"]["cursor"][0]


def encoded(position) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def test_a_tampered_cursor_is_a_400_not_a_500(client):
    fingerprint = attributes.Query(order=attributes.Order("seats", "integer", True)).fingerprint("customers")
    query = "/data?source=customers&order=seats.desc&cursor="
    assert client.get(query + encoded([7, 5, fingerprint])).status_code == 200  # a made-up position is a position
    for position in (["ten", 5, fingerprint], [True, 5, fingerprint], [[1], 5, fingerprint], [7, "5", fingerprint],
                     [7, 0, fingerprint], [7, 5, 42], [7, 5, fingerprint, 1]):
        response = client.get(query + encoded(position))
        assert response.status_code == 400, position
        assert list(response.json["errors"]) == ["cursor"]
    signup = attributes.Query(order=attributes.Order("signup", "timestamp", False)).fingerprint("customers")
    bad_time = client.get("/data?source=customers&order=signup.asc&cursor=" + encoded(["soon", 5, signup]))
    assert bad_time.status_code == 400


def test_the_openapi_document_describes_each_sources_fields(client, url):
    response = client.get("/openapi.json")
    schemas = response.json["components"]["schemas"]
    assert schemas["Attributes_customers"]["properties"]["seats"]["type"] == ["integer", "null"]
    assert schemas["Attributes_customers"]["properties"]["signup"]["format"] == "date-time"
    assert schemas["Attributes_customers"]["properties"]["tags"] == {"description": "json; filters: is"}
    assert "gte" in schemas["Attributes_customers"]["properties"]["mrr"]["description"]
    assert schemas["Attributes_orders"]["required"] == ["total", "status"]  # catalog order
    assert "Attributes_api" not in schemas  # it declares nothing
    assert "plan=eq.pro" in response.json["info"]["description"]
    parameters = {p["name"] for p in response.json["paths"]["/data"]["get"]["parameters"]}
    assert {"fields", "order"} <= parameters
    # a run declares a new field: the next request's document has it, and the old ETag no longer matches
    etag = response.headers["ETag"]
    assert client.get("/openapi.json", headers={"If-None-Match": etag}).status_code == 304
    declare_fields(url, "orders", {"total": "numeric", "status": "text", "placed": "date"})
    try:
        fresh = client.get("/openapi.json", headers={"If-None-Match": etag})
        assert fresh.status_code == 200
        assert fresh.json["components"]["schemas"]["Attributes_orders"]["properties"]["placed"]["format"] == "date"
    finally:
        declare_fields(url, "orders", {"total": "numeric", "status": "text"})


def test_without_the_warehouse_the_document_still_lists_every_route(make_app):
    client = make_app(closed_port_url()).test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200 and "/data" in response.json["paths"]
    assert not [name for name in response.json["components"]["schemas"] if name.startswith("Attributes_")]


def test_the_openapi_document_with_sources_validates(client):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(client.get("/openapi.json").json)


@pytest.fixture(scope="module")
def rejected(url):
    insert_run(url, RUN_ID)
    insert_rejects(url, "run-0", [{"source": "customers", "source_id": "c99", "reason": "old reason",
                                   "payload": {"id": "c99"}, "stage": "store_raw"}])
    insert_rejects(url, RUN_ID, [
        {"source": "customers", "source_id": "c99", "reason": "seats: 'many' is not an integer",
         "payload": {"id": "c99", "seats": "many", "password": "hunter2"}},
        {"source": "customers", "source_id": "c1", "reason": "an older version was bad", "payload": {"id": "c1"}},
        {"source": "orders", "source_id": "o9", "reason": "total: not a number", "payload": {"id": "o9"}},
    ])
    return url


def test_a_rejected_record_without_a_row_is_a_404_with_its_latest_rejection(client, rejected):
    response = client.get("/data/customers/c99")
    assert response.status_code == 404
    body = response.json
    assert body["message"] == f"no customers record with source_id 'c99': run {RUN_ID} rejected it at normalize"
    assert {key: body["rejection"][key] for key in ("run_id", "stage", "reason")} == {
        "run_id": RUN_ID, "stage": "normalize", "reason": "seats: 'many' is not an integer"}
    assert body["code"] == 404 and body["errors"] == {} and set(body) == {"code", "status", "message", "errors",
                                                                        "rejection"}
    assert "hunter2" not in response.get_data(as_text=True) and "payload" not in body["rejection"]


def test_a_never_seen_record_is_a_plain_404_and_a_rejected_one_with_a_row_is_served(client, rejected):
    response = client.get("/data/customers/c404")
    assert response.status_code == 404 and "rejection" not in response.json
    assert client.get("/data/customers/c1").status_code == 200  # rejected once, loaded since


def test_rejects_filtered_by_source(client, rejected):
    rejects = f"/runs/{quote(RUN_ID)}/rejects"
    assert {item["source_id"] for item in client.get(f"{rejects}?source=customers").json["data"]} == {"c99", "c1"}
    orders = client.get(f"{rejects}?source=orders").json
    assert [item["source_id"] for item in orders["data"]] == ["o9"] and orders["total"] == 1
    assert client.get(rejects).json["total"] == 3
    unknown = client.get(f"{rejects}?source=nowhere")
    assert unknown.status_code == 400 and "nowhere" in unknown.json["errors"]["source"][0]
    assert "customers" in unknown.json["errors"]["source"][0]


def plan(url: str, statement, params: dict) -> str:
    # psycopg2, as the app: values inline, so the planner sees the folded conditions
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("explain " + (statement if isinstance(statement, str) else statement.as_string(conn)), params)
        text = "\n".join(row[0] for row in cursor.fetchall())
    conn.close()
    return text


@pytest.fixture(scope="module")
def large(make_database):
    """60,000 rows over three sources, vacuumed (as autovacuum leaves a table: the GIN pending list merged)."""
    url = make_database()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            "insert into normalized_data (source, source_id, created_at, updated_at, first_seen_run_id,"
            " last_changed_run_id, input_hash, attributes)"
            " select (array['customers', 'orders', 'events'])[n % 3 + 1], 'r' || n, now(), now(), 'run-1', 'run-1',"
            " 'fixture', jsonb_build_object('plan', 'plan' || (n % 50), 'seats', n % 1000, 'active', n % 2 = 0)"
            " from generate_series(1, 60000) as n")
        cursor.execute("vacuum analyze normalized_data")
    conn.close()
    return url


@pytest.mark.parametrize("filters", [{"plan": ["eq.plan7"]}, {"plan": ["in.(plan7,plan8)"]},
                                     {"plan": ["eq.plan7"], "seats": ["gte.10"]}])
def test_equality_filters_use_the_gin_index(large, filters):
    declared = attributes.parse({"plan": "text", "seats": "integer", "active": "boolean"}, "customers", None, None,
                                filters)
    params = {"source": "customers", "updated_since": None, "pattern": None, "include_deleted": False,
              "sources": None}
    count = psycopg2.sql.SQL(queries.query("webapp.sql", "data_count")).format(
        filters=filters_clause(params), attributes=attributes.where(declared, params))
    assert "normalized_data_attributes_idx" in plan(large, count, params)


def test_a_records_rejection_is_found_by_its_index(large):
    with psycopg2.connect(large) as conn, conn.cursor() as cursor:
        cursor.execute("insert into rejected_records (run_id, source, source_id, stage, reason)"
                       " select 'run-' || (n % 20), 'customers', 'x' || n, 'normalize', 'bad'"
                       " from generate_series(1, 20000) as n")
        cursor.execute("analyze rejected_records")
    conn.close()
    rejection = plan(large, queries.query("webapp.sql", "record_rejection"),
                     {"source": "customers", "source_id": "x99", "max_text": 10})
    assert "rejected_records_record_idx" in rejection


def test_typed_values_and_canonical_containment():
    assert attributes.typed("integer", "-12", "seats") == Decimal(-12)
    assert attributes.typed("timestamp", "2026-01-01", "signup") == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert attributes.typed("date", "2026-02-28", "birthday") == date(2026, 2, 28)
    assert exact_json.dumps({"mrr": Decimal(BIG)}) == f'{{"mrr": {BIG}}}'


def test_the_fields_bench_times_and_explains_every_request(make_database):
    lines = api_fields.run(make_database(), 3000, 1)
    assert len(lines) == 1 + 2 * len(api_fields.REQUESTS)
    for request, timing, explained in zip(api_fields.REQUESTS, lines[1::2], lines[2::2]):
        assert timing.endswith(f"/data?source=customers&{request}") and " ms " in timing
        assert "Execution Time" in explained
