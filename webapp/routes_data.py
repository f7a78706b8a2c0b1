"""/data: the normalized records, filtered and paginated by page or by keyset cursor; one record by key.
/sources: the sources they come from, with their checkpoints and last loads."""

from flask import Blueprint, request
from marshmallow import ValidationError
from psycopg2 import sql
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import NotFound

from webapp import attributes, audit, auth, db, scopes, source_catalog
from webapp.errors import error_response
from webapp.openapi import documented
from webapp.responses import conditional_json
from webapp.schemas import (MAX_REJECT_TEXT_CHARS, data_page_schema, data_query_schema, load_query,
                            no_query_schema, record_detail_schema, record_not_found_schema, record_path_schema,
                            record_query_schema, rejection_schema, sources_schema)

blueprint = Blueprint("data", __name__)
WATERMARK_HEADER = "Sluice-Watermark"


def like_pattern(search: str) -> str:
    """A substring ILIKE pattern in which the user's %, _ and \\ match themselves (ESCAPE '\\')."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filters(args: dict) -> dict:
    search = args.get("search")
    return {"source": args.get("source"), "updated_since": args.get("updated_since"),
            "pattern": like_pattern(search) if search is not None else None,
            "include_deleted": args["include_deleted"], "sources": scopes.current().source_list()}


def filters_clause(filters: dict) -> sql.Composable:
    """The {filters} of data_page, data_count and data_estimate: the data_filter_* fragment of each filter the
    request has, none for those it lacks, so that one statement text serves every request with the same filters and
    a generic plan of it (webapp.db's prepared statements) has nothing left to fold."""
    present = [name for name in ("source", "sources", "updated_since") if filters[name] is not None]
    if filters["pattern"] is not None:
        present.append("search")
    if not filters["include_deleted"]:
        present.append("live")
    if not present:
        return attributes.fragment("data_no_attribute_filter")
    return sql.SQL(" and ").join(attributes.fragment(f"data_filter_{name}") for name in present)


def check_known(source: str | None) -> None:
    """A 400 listing the known sources when source names none of them (runs add sources: an unknown one is read
    again, webapp.source_catalog). Known: to this request's credential; a source it may not read is unknown, so its
    existence is not revealed."""
    if source is None:
        return
    known = source_catalog.known_sources(source)
    if source not in known:
        raise ValidationError({"source": [
            f"Unknown source {source!r}; the known sources are: {', '.join(known) or 'none yet'}."]})


def _split_query(args) -> tuple[MultiDict, dict[str, list[str]]]:
    """/data's own parameters, and the rest: filters on declared fields (a filter may repeat: they AND)."""
    own = {field.data_key or name for name, field in data_query_schema.fields.items()}
    parameters = MultiDict([(key, value) for key, value in args.items(multi=True) if key in own])
    filters = {key: values for key, values in args.lists() if key not in own}
    return parameters, filters


def _total(mode: str, filters: dict, declared: attributes.Query, where: dict) -> sql.Composable:
    """The {total} of data_answer: an exact count in the page's statement (so in its snapshot), or null (none, or
    estimated: an EXPLAIN, which no statement can nest; _estimate runs it after)."""
    if mode != "exact":
        return attributes.fragment("data_total_none")
    if filters["pattern"] is None and filters["updated_since"] is None and not declared.filters:
        return sql.SQL("({})").format(attributes.fragment("data_count_all"))
    return sql.SQL("({})").format(attributes.fragment("data_count").format(**where))


def _estimate(params: dict, where: dict) -> int:
    """The planner's row estimate for the page's filters: no scan, so it stays cheap on any table size."""
    (plan,) = db.fetch_one("data_estimate", params, where)["QUERY PLAN"]
    return int(plan["Plan"]["Plan Rows"])


def _after(cursor, declared: attributes.Query, source: str | None) -> tuple | None:
    """The keyset position of a cursor, checked against this request's order and filters."""
    if cursor is None:
        return None
    key, row_id, fingerprint = cursor
    if fingerprint != declared.fingerprint(source):
        raise ValidationError({"cursor": [
            "This cursor comes from a request with another order or other filters on declared fields; pass "
            "next_cursor with the same source, order and filters, or start again without cursor."]})
    if fingerprint is None:
        return key, row_id  # the default order's: its updated_at was checked as the cursor was read
    try:
        return attributes.cursor_key(declared, key), row_id
    except (ValueError, ValidationError) as error:
        raise ValidationError({"cursor": [
            "Not a valid cursor: pass next_cursor of a previous response unchanged."]}) from error


def _item(row: dict, declared: attributes.Query, source: str | None) -> dict:
    if source is not None:
        row = {**row, "attributes": attributes.project(row["attributes"], declared)}
    return row


@blueprint.get("/data")
@documented(query=data_query_schema, responses={200: data_page_schema}, errors=(400, 503), etag="weak",
            headers={WATERMARK_HEADER: "the watermark of this answer, as in the body; a 304 has it too"})
def list_records():
    """Normalized records, newest update first (updated_at desc, id desc), or in the order of a declared field."""
    auth.require_sources()
    parameters, field_filters = _split_query(request.args)
    args = load_query(data_query_schema, parameters)
    source = args.get("source")
    check_known(source)
    fields = source_catalog.declared_fields(source) if source else {}
    declared = attributes.parse(fields, source, args.get("field_names"), args.get("order"), field_filters)
    filters = _filters(args)
    after = _after(args.get("cursor"), declared, source)
    page_size = args["page_size"]
    page = None if after else args["page"]
    params = {
        **filters,
        # one row more than asked tells whether another page follows, without counting
        "limit": page_size + 1,
        "offset": (page - 1) * page_size if page else 0,
    }
    where = {"filters": filters_clause(filters), "attributes": attributes.where(declared, params)}
    after_sql, order_sql = attributes.keyset(declared, after, params)
    page_query = attributes.fragment("data_page").format(**where, after=after_sql, order=order_sql)
    total = _total(args["count"], filters, declared, where)
    # A generic plan only where no value decides the best one. The selectivity of a search pattern, of
    # updated_since or of a declared field's filter does: a generic plan assumes a third of the rows and scans the
    # table (a search: 2 s against 1 ms at 1M rows; the count of a poll since the last watermark the same), and a
    # field name that is a parameter hides the expression indexes on declared fields.
    by_value = filters["pattern"] is not None or filters["updated_since"] is not None
    plan = "custom" if by_value or declared.filters or declared.order else "generic"
    # one round trip: the watermark first (every change the rows miss commits later, stamped at or after it),
    # then the page and its total in one snapshot taken after it
    answer = db.fetch_all_after_watermark("data_answer", params, {"page": page_query, "total": total}, plan)
    watermark = answer[0]["watermark"]
    rows = [row for row in answer if row["ordinal"] is not None]
    has_more = len(rows) > page_size
    rows = rows[:page_size]
    last = rows[-1] if has_more else None
    next_cursor = attributes.position(last, declared, source) if last else None
    body = data_page_schema.dump({
        "data": [_item(row, declared, source) for row in rows],
        "total": _estimate(params, where) if args["count"] == "estimated" else answer[0]["total"],
        "page": page, "page_size": page_size, "has_more": has_more, "next_cursor": next_cursor,
        "watermark": watermark,
    })
    audit.records({row["source"] for row in rows}, len(rows))
    response = conditional_json(body, volatile=("watermark",))
    response.headers[WATERMARK_HEADER] = body["watermark"]
    return response


@blueprint.get("/data/<source>/<id:source_id>")
@documented(path=record_path_schema, query=record_query_schema,
            responses={200: record_detail_schema, 404: record_not_found_schema}, errors=(400, 503))
def get_record(source, source_id):
    """One record with its lineage: the runs that first saw it, last changed it and deleted it."""
    auth.require_sources()
    key = record_path_schema.load({"source": source, "source_id": source_id})
    args = load_query(record_query_schema, request.args)
    message = f"no {key['source']} record with source_id {key['source_id']!r}"
    if not scopes.current().allows(key["source"]):
        raise NotFound(message)  # the answer for a record that does not exist: another source's is not revealed
    row = db.fetch_one("data_record", {**key, **args})
    if row is None and not scopes.current().operations:
        raise NotFound(message)  # why a record was rejected is operations data, as the rejects are
    if row is None:
        rejection = db.fetch_one("record_rejection", {**key, "max_text": MAX_REJECT_TEXT_CHARS})
        if rejection is None:
            raise NotFound(message)
        return error_response(404, f"{message}: run {rejection['run_id']} rejected it at {rejection['stage']}",
                              extra={"rejection": rejection_schema.dump(rejection)})
    declared = attributes.Query(declared=source_catalog.declared_fields(key["source"]))
    audit.records([key["source"]], 1)
    return record_detail_schema.dump({**row, "attributes": attributes.project(row["attributes"], declared)})


def _source(row: dict, operations: bool) -> dict:
    return {
        "name": row["name"], "kind": row["kind"], "row_count": row["row_count"], "deleted_count": row["deleted_count"],
        "checkpoint": {"last_processed_id": row["last_processed_id"], "last_processed_at": row["last_processed_at"],
                       "last_cursor": row["last_cursor"], "read_until": row["read_until"]},
        "last_success": {"run_id": row["last_success_run_id"], "at": row["last_success_at"]}
        if row["last_success_run_id"] is not None else None,
        "last_error": {"run_id": row["last_error_run_id"], "at": row["last_error_at"],
                       "error": row["last_error_summary"]}
        if row["last_error_summary"] is not None and operations else None,
        "last_skip": {"run_id": row["last_skip_run_id"], "at": row["last_skip_at"], "reason": row["last_skip_reason"]}
        if row["last_skip_run_id"] is not None else None,
        "quality": {"run_id": row["quality_run_id"], "status": row["quality_status"], "score": row["quality_score"],
                    "at": row["quality_at"], "released_by": row["released_by"], "released_at": row["released_at"],
                    "failing": row["failing"]}
        if row["quality_run_id"] is not None else None,
    }


@blueprint.get("/sources")
@documented(responses={200: sources_schema}, errors=(400, 503), etag="strong")
def list_sources():
    """Every source in the warehouse: kind, live and deleted rows, checkpoint, last successful load, last error,
    last skip and its newest batch's quality (score, held or published, failing checks)."""
    auth.require_sources()
    load_query(no_query_schema, request.args)
    scope = scopes.current()
    rows = db.fetch_all("sources", {"sources": scope.source_list()})
    audit.records([row["name"] for row in rows], len(rows))
    return conditional_json(sources_schema.dump({"data": [_source(row, scope.operations) for row in rows]}))
