"""The OpenAPI 3.1 document, built by apispec from the routes' @documented schemas and the URL map."""

import re
from dataclasses import dataclass, field
from http import HTTPStatus

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

import sluice
from webapp.attributes import OPERATORS
from webapp.hooks import MAX_URL_BYTES
from webapp.schemas import error_schema

OPENAPI_VERSION = "3.1.0"
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
DESCRIPTION = f"""Read-only API over the Sluice warehouse.

Errors always have the shape `{{"code", "status", "message", "errors"}}`; `errors` names each invalid
parameter. Query strings reject unknown and repeated parameters. `/data` pages either by `page` or by
`cursor` (keyset, stable under inserts); giving both is a 400. `/data`, `/stats` and `/sources` send an ETag
and answer `If-None-Match` with 304. A URL (path and query string) over {MAX_URL_BYTES:,} bytes is a 414 in the
same shape, and so is what gunicorn refuses before the app sees it: a request line over 8,190 bytes (414),
headers over its limits (431) or malformed HTTP (400).

To follow changes, poll `/data?updated_since=<watermark>` with the `watermark` of the previous answer
(of its first page, when it took several): no committed change is missed, even one whose load was
running during that answer; some rows may come again.

**Declared fields.** A source may declare typed fields in its catalog entry; each record of `/data` carries them
in `attributes` (the schema `Attributes_<source>` of this document lists each source's, built from the
warehouse on each request). With `source=`: `fields=email,plan` serves only those; `order=seats.desc` (or
`.asc`; nulls last, ties by id) orders by one, and `next_cursor` follows that order; and any other parameter
filters on a declared field in PostgREST's syntax, `<field>=<operator>.<value>`: `plan=eq.pro`, `seats=gte.10`,
`signup=lt.2026-01-01`, `plan=in.(free,pro)`, `plan=is.null`, `active=is.true`, `email=ilike.*@example.com`.
Operators by type: text eq neq gt gte lt lte in is like ilike (`*` stands for `%`); integer, numeric,
timestamp and date eq neq gt gte lt lte in is; boolean eq neq is (null, true, false); json is (null). Values
are typed as the field is declared; several filters (the same field repeated too) must all hold; neq, gt...
never match a null. A field named like one of /data's own parameters is filtered as `attributes.<field>`
(which works for any field). An unknown field, operator or a value of the wrong type is a 400 naming it; so
is a cursor passed with another order or other filters.

`/export/{{source}}` streams every row of one source from one snapshot, in id order, as CSV (default) or NDJSON
(`format=ndjson` or `Accept: application/x-ndjson`; its last line is `{{"_watermark": …}}`), with the snapshot's
watermark in the `Sluice-Watermark` header: export, then poll `/data?updated_since=<watermark>`. `after=<id>`
resumes one cut short (a body without its last chunk). At most a few run at once per worker: beyond, a 503 with
`Retry-After`.

A record its source no longer has is soft-deleted: `/data` and `/data/{{source}}/{{source_id}}` leave it out
unless `include_deleted=true`, which shows it with `deleted_at` set. Its deletion moves `updated_at`, so a
client polling `updated_since` with `include_deleted=true` sees each deletion as such a tombstone, and a record
that comes back with `deleted_at` null again."""
AUTH_DESCRIPTIONS = {
    "keys": """

**Authentication.** Every operation but `/health` and `/openapi.json` needs an API key, sent as
`Authorization: Bearer sluice_...`: without one, or with one that is unknown, revoked or expired, the answer is a
401 with `WWW-Authenticate`. A key reads the sources it was created for (or every one) and, with the operations
scope, `/runs`, the rejects and the sources' errors: a request outside its scope is a 403, and a record of another
source is a 404, as one that does not exist. `/data`, `/stats`, `/sources` and this document show only the
sources the key may read. `/health` without a key says only its status.""",
    "oidc": """

**Authentication.** Every operation but `/health` and `/openapi.json` needs a JWT of the configured OpenID
Connect issuer, sent as `Authorization: Bearer <token>`; its scope claim grants `sluice:read:<source>`,
`sluice:read:*` and `sluice:operations`. No token, or an invalid or expired one, is a 401 with
`WWW-Authenticate`; a request outside the token's scopes is a 403, and a record of another source a 404.
`/health` without a token says only its status.""",
    "none": """

**Authentication.** This deployment runs open (SLUICE_AUTH=none): every caller reads everything.""",
}
ETAGS = {"strong": "strong hash of the body",
         "weak": "weak: a hash of the body without its watermark, so it matches while the records are the same"}
# Every operation's group, by the blueprint that serves it (generated clients put each group in a module).
TAGS = {"data": "data", "export": "data", "schema": "data", "runs": "runs", "stats": "runs", "meta": "meta", "health": "meta",
        "metrics": "meta"}
TAG_DESCRIPTIONS = {"data": "the records the pipeline loaded and the sources they come from",
                    "runs": "the pipeline's runs, rejects and totals",
                    "meta": "the service itself: index, document, health, metrics"}
ALWAYS_ERRORS = (414,)  # any URL may be too long
AUTH_ERRORS = {401: "Unauthorized: no credential, or one that is unknown, revoked, expired or malformed",
               403: "Forbidden: the credential's scope does not cover this (another source's record is a 404)",
               429: "Too Many Requests: over the rate limit (or too many bad credentials from one address)"}


@dataclass(frozen=True)
class Operation:
    responses: dict[int, Schema]
    query: Schema | None = None
    path: Schema | None = None
    errors: tuple[int, ...] = ()
    etag: str | None = None  # a key of ETAGS
    headers: dict[str, str] = field(default_factory=dict)  # name: description, of headers of every answer
    summary: str = ""
    open_access: bool = False  # answers without credentials too (webapp.auth reads this)
    media_type: str | tuple[str, ...] = "application/json"  # of its successful answers (errors are always JSON)


def documented(*, responses, query=None, path=None, errors=(), etag=None, headers=None, open_access=False,
               media_type="application/json"):
    """Attach the schemas of a view to it, for the OpenAPI document, the index of endpoints and authentication.
    A response may be a tuple of schemas: the answer has one of their shapes."""
    def attach(view):
        summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else ""
        view.openapi = Operation(responses=responses, query=query, path=path, errors=tuple(errors),
                                 etag=etag, headers=dict(headers or {}), summary=summary, open_access=open_access,
                                 media_type=media_type)
        return view
    return attach


def openapi_path(rule) -> str:
    """/data/<source>/<id:source_id> → /data/{source}/{source_id}."""
    return _CONVERTER.sub(r"{\1}", rule.rule)


def public_methods(rule) -> list[str]:
    return sorted(rule.methods - {"HEAD", "OPTIONS"})


def operation_of(app, rule) -> Operation:
    doc = getattr(app.view_functions[rule.endpoint], "openapi", None)
    if doc is None:
        raise LookupError(f"route {rule.rule} (endpoint {rule.endpoint}) has no @documented schemas")
    return doc


def _json(schema, description: str, media_type: str | tuple[str, ...] = "application/json") -> dict:
    """A response of one media type, or of each of several (the client chooses: /export's format)."""
    types = media_type if isinstance(media_type, tuple) else (media_type,)
    return {"description": description, "content": {name: {"schema": schema} for name in types}}


def _header(description: str) -> dict:
    return {"description": description, "schema": {"type": "string"}}


def _content(schema) -> dict | Schema:
    return {"anyOf": list(schema)} if isinstance(schema, tuple) else schema


def _security(auth_mode: str) -> tuple[dict, list[dict]]:
    """The security schemes of SLUICE_AUTH's mode, and the requirement of a protected operation."""
    if auth_mode == "keys":
        return {"apiKey": {"type": "http", "scheme": "bearer", "description": (
            "an API key (sluice_...) sent as Authorization: Bearer <key>; created with "
            "`flask --app webapp keys create` (README, Authentication)")}}, [{"apiKey": []}]
    if auth_mode == "oidc":
        return {"bearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": (
                    "a JWT of the configured OpenID Connect issuer, sent as Authorization: Bearer <token>; its "
                    "scope claim grants sluice:read:<source>, sluice:read:* and sluice:operations")},
                "oidc": {"type": "openIdConnect", "openIdConnectUrl": ""}}, [{"bearerToken": []}, {"oidc": []}]
    return {}, []


def _operation(endpoint: str, doc: Operation, auth_mode: str) -> dict:
    parameters = []
    if doc.path is not None:
        parameters.append({"in": "path", "schema": doc.path})
    if doc.query is not None:
        parameters.append({"in": "query", "schema": doc.query})
    responses = {}
    for code, schema in doc.responses.items():
        responses[str(code)] = _json(_content(schema), HTTPStatus(code).phrase, doc.media_type)
    headers = {name: _header(description) for name, description in doc.headers.items()}
    if doc.etag:
        parameters.append({"in": "header", "name": "If-None-Match", "required": False,
                           "schema": {"type": "string"}, "description": "an ETag of an earlier answer"})
        headers = {"ETag": _header(ETAGS[doc.etag]), **headers}
        responses["304"] = {"description": "Not Modified: the If-None-Match ETag still matches",
                            "headers": headers}
    if headers:
        responses["200"]["headers"] = headers
    _, requirement = _security(auth_mode)
    errors = {*doc.errors, *ALWAYS_ERRORS}
    if requirement:
        # a wrong credential is a 401 even where none is needed; only a protected operation refuses a scope
        errors |= {401} if doc.open_access else {401, 403}
    for code in sorted(errors):
        responses[str(code)] = _json(error_schema, AUTH_ERRORS.get(code, HTTPStatus(code).phrase))
    for code in (401, 403):
        if str(code) in responses:
            responses[str(code)]["headers"] = {"WWW-Authenticate": _header(
                "Bearer, with error=invalid_token and why (401) or error=insufficient_scope (403)")}
    responses["429"] = {**_json(error_schema, AUTH_ERRORS[429]),
                        "headers": {"Retry-After": _header("seconds to wait before the next request")}}
    responses["default"] = _json(error_schema, "any other error, in the same shape")
    operation = {"operationId": endpoint.rsplit(".", 1)[-1], "summary": doc.summary, "tags": [tag_of(endpoint)],
                 "parameters": parameters, "responses": responses}
    if requirement:
        # an open operation takes a credential too (/health shows its details to one): none, or any scheme
        operation["security"] = [{}, *requirement] if doc.open_access else requirement
    # the view's name (list_records): generated clients name their functions after it (test_webapp_openapi checks
    # that no two are equal)
    return operation


def tag_of(endpoint: str) -> str:
    blueprint = endpoint.split(".")[0]
    if blueprint not in TAGS:
        raise LookupError(f"endpoint {endpoint}: blueprint {blueprint!r} has no tag in webapp.openapi.TAGS")
    return TAGS[blueprint]


def build(app) -> dict:
    """The document for every route of the app; LookupError for a route without @documented."""
    mode = app.config["AUTH"]
    spec = APISpec(title="Sluice read API", version=sluice.__version__, openapi_version=OPENAPI_VERSION,
                   plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION + AUTH_DESCRIPTIONS[mode]},
                   tags=[{"name": name, "description": text} for name, text in TAG_DESCRIPTIONS.items()])
    schemes, _ = _security(mode)
    for name, scheme in schemes.items():
        if scheme["type"] == "openIdConnect":
            scheme = {**scheme, "openIdConnectUrl": app.config["OIDC_ISSUER"].rstrip("/")
                      + "/.well-known/openid-configuration"}
        spec.components.security_scheme(name, scheme)
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        doc = operation_of(app, rule)
        operations = {method.lower(): _operation(rule.endpoint, doc, mode) for method in public_methods(rule)}
        spec.path(path=openapi_path(rule), operations=operations)
    return spec.to_dict()


# JSON Schema of each declared type, as /data serves it (null when the record lacks the field)
ATTRIBUTE_SCHEMAS = {"text": {"type": ["string", "null"]}, "integer": {"type": ["integer", "null"]},
                     "numeric": {"type": ["number", "null"]}, "boolean": {"type": ["boolean", "null"]},
                     "timestamp": {"type": ["string", "null"], "format": "date-time"},
                     "date": {"type": ["string", "null"], "format": "date"}, "json": {}}


def with_sources(document: dict, declared: list[dict]) -> dict:
    """The document plus one component schema per source, Attributes_<source>, of its declared fields."""
    per_source: dict[str, dict] = {}
    for row in declared:
        properties = per_source.setdefault(row["source"], {})
        properties[row["field"]] = {**ATTRIBUTE_SCHEMAS[row["type"]], "description": (
            f"{row['type']}; filters: {', '.join(OPERATORS[row['type']])}")}
    schemas = {f"Attributes_{source}": {
        "type": "object", "properties": properties, "required": list(properties),
        "description": f"The declared fields of source {source}: each item's attributes in /data?source={source}"}
        for source, properties in per_source.items()}
    components = document.get("components", {})
    return {**document, "components": {**components, "schemas": {**components.get("schemas", {}), **schemas}}}
