"""GET /openapi.json: it lists every route, holds together, and real answers match its schemas."""

import re

import pytest
from webapp_fixtures import catalog, closed_port_url, insert_records, insert_rejects, insert_run

from webapp import create_app, db, openapi

jsonschema = pytest.importorskip("jsonschema")  # an Airflow dependency, pinned in constraints.txt

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def app(make_database):
    url = make_database()
    insert_records(url, catalog(3))
    insert_run(url, "scheduled__2024-05-01T00:00:00+00:00", source_counts={"api": {"fetched": 3, "inserted": 3}})
    insert_rejects(url, "scheduled__2024-05-01T00:00:00+00:00", [{"source": "api", "reason": "bad", "payload": {}}])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    yield app
    db.warehouse(app).close()


@pytest.fixture(scope="module")
def document(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.json


def refs(node):
    """Every $ref value anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_route_is_documented(app, document):
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in document["paths"], rule.rule
        documented = {method.upper() for method in document["paths"][path]}
        assert documented == rule.methods - {"HEAD", "OPTIONS"}, rule.rule


def test_document_structure(document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        template_parameters = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            assert method in HTTP_METHODS
            operation_ids.append(operation["operationId"])
            assert operation["summary"]
            parameters = operation["parameters"]
            assert len({(p["in"], p["name"]) for p in parameters}) == len(parameters), path
            for parameter in parameters:
                assert parameter["in"] in {"query", "path", "header", "cookie"}
                assert isinstance(parameter["schema"], dict)
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == template_parameters, path
            assert all(p["required"] for p in parameters if p["in"] == "path")
            assert "200" in operation["responses"] and "default" in operation["responses"]
            for code, response in operation["responses"].items():
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code)
                assert response["description"]
                for media in response.get("content", {}).values():
                    assert isinstance(media["schema"], dict)
    assert len(operation_ids) == len(set(operation_ids))
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"], ref


def test_component_schemas_are_valid_json_schema(document):
    # OpenAPI 3.1 schemas are JSON Schema 2020-12
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object", name


def test_query_parameters_match_the_schemas(document):
    names = {p["name"] for p in document["paths"]["/data"]["get"]["parameters"] if p["in"] == "query"}
    assert names == {"page", "page_size", "source", "search", "updated_since", "cursor", "count", "include_deleted",
                     "fields", "order"}
    page_size = next(p for p in document["paths"]["/data"]["get"]["parameters"] if p["name"] == "page_size")
    assert page_size["schema"] == {"type": "integer", "default": 10, "minimum": 1, "maximum": 100}


@pytest.mark.parametrize("url", [
    "/", "/health", "/data", "/data?count=none&source=csv", "/data/api/item-1", "/data/api/nothing",
    "/data?page_size=1000", "/stats", "/runs", "/runs/scheduled__2024-05-01T00:00:00+00:00/rejects",
    "/runs/unknown/rejects", "/sources", "/data?source=nowhere", "/data?include_deleted=true",
    "/data/api/item-1?include_deleted=true", "/data?include_deleted=maybe",
])
def test_answers_match_their_documented_schema(app, document, url):
    response = app.test_client().get(url)
    rule, _ = app.url_map.bind("localhost").match(url.split("?")[0], return_rule=True)
    operation = document["paths"][openapi.openapi_path(rule)]["get"]
    documented = operation["responses"].get(str(response.status_code), operation["responses"]["default"])
    schema = {**documented["content"]["application/json"]["schema"], "components": document["components"]}
    jsonschema.validate(response.json, schema, cls=jsonschema.Draft202012Validator)


def enums(node):
    """Every enum anywhere in a JSON document."""
    if isinstance(node, dict):
        yield from [node["enum"]] if "enum" in node else []
        for value in node.values():
            yield from enums(value)
    elif isinstance(node, list):
        for item in node:
            yield from enums(item)


def test_source_is_any_name_not_an_enum_of_the_seed_sources(document):
    # (csv is also one of /export's formats)
    assert not [values for values in enums(document) if {"api", "csv"} & set(values) and values != ["csv", "ndjson"]]
    source_fields = [document["components"]["schemas"][schema]["properties"]["source"]
                     for schema in ("Record", "RecordDetail", "Reject")]
    parameters = [parameter["schema"] for path in ("/data", "/data/{source}/{source_id}")
                  for parameter in document["paths"][path]["get"]["parameters"] if parameter["name"] == "source"]
    assert len(parameters) == 2
    for schema in source_fields + parameters:
        assert schema["type"] == "string" and schema["pattern"] == "^[a-z][a-z0-9_]{0,62}$", schema


def test_sources_is_documented(document):
    operation = document["paths"]["/sources"]["get"]
    assert (operation["operationId"], operation["tags"]) == ("list_sources", ["data"])
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Sources"}


def test_an_undocumented_route_fails_the_build():
    app = create_app({"AUTH": "none", "DATABASE_URL": closed_port_url()})
    app.add_url_rule("/secret", view_func=lambda: "")
    with pytest.raises(LookupError, match="/secret"):
        openapi.build(app)


@pytest.mark.parametrize("url", ["/health", "/data", "/stats", "/sources"])
def test_outage_answers_match_their_documented_schema(document, url):
    app = create_app({"AUTH": "none", "DATABASE_URL": closed_port_url()})
    response = app.test_client().get(url)
    assert response.status_code == 503
    responses = document["paths"][url]["get"]["responses"]
    schema = {**responses["503"]["content"]["application/json"]["schema"], "components": document["components"]}
    jsonschema.validate(response.json, schema, cls=jsonschema.Draft202012Validator)


def test_include_deleted_and_deleted_at_are_described(document):
    for path in ("/data", "/data/{source}/{source_id}"):
        (parameter,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "include_deleted"]
        assert parameter["in"] == "query" and parameter["schema"] == {"type": "boolean", "default": False}
        assert "tombstone" in parameter["description"]
    for name in ("Record", "RecordDetail"):
        deleted_at = document["components"]["schemas"][name]["properties"]["deleted_at"]
        assert deleted_at["type"] == ["string", "null"] and "null: live" in deleted_at["description"]
    assert "include_deleted=true" in document["info"]["description"]
