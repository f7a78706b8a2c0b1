"""/data: the normalized records, filtered and paginated by page or by keyset cursor; one record by key.
/sources: the sources they come from, with their checkpoints and last loads."""

from flask import Blueprint, request
from marshmallow import ValidationError
from werkzeug.exceptions import NotFound

from webapp import db
from webapp.openapi import documented
from webapp.responses import conditional_json
from webapp.schemas import (data_page_schema, data_query_schema, load_query, no_query_schema,
                            record_detail_schema, record_path_schema, record_query_schema, sources_schema)

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
            "include_deleted": args["include_deleted"]}


def _known(source: str | None) -> None:
    """A 400 listing the known sources when source names none of them (read on each request: runs add sources)."""
    if source is None:
        return
    known = [row["source"] for row in db.fetch_all("known_sources")]
    if source not in known:
        raise ValidationError({"source": [
            f"Unknown source {source!r}; the known sources are: {', '.join(known) or 'none yet'}."]})


def _total(mode: str, filters: dict) -> int | None:
    if mode == "none":
        return None
    if mode == "estimated":
        (plan,) = db.fetch_one("data_estimate", filters)["QUERY PLAN"]
        return int(plan["Plan"]["Plan Rows"])
    if filters["pattern"] is None and filters["updated_since"] is None:
        return db.fetch_one("data_count_all", filters)["total"]
    return db.fetch_one("data_count", filters)["total"]


@blueprint.get("/data")
@documented(query=data_query_schema, responses={200: data_page_schema}, errors=(400, 503), etag="weak",
            headers={WATERMARK_HEADER: "the watermark of this answer, as in the body; a 304 has it too"})
def list_records():
    """Normalized records, newest update first (updated_at desc, id desc)."""
    args = load_query(data_query_schema, request.args)
    _known(args.get("source"))
    filters = _filters(args)
    # before the rows: every change the rows below miss commits later, stamped at or after it
    watermark = db.fetch_one_before_snapshot("data_watermark")["watermark"]
    page_size = args["page_size"]
    after = args.get("cursor")
    page = None if after else args["page"]
    rows = db.fetch_all("data_page", {
        **filters,
        "after_updated_at": after[0] if after else None,
        "after_id": after[1] if after else None,
        # one row more than asked tells whether another page follows, without counting
        "limit": page_size + 1,
        "offset": (page - 1) * page_size if page else 0,
    })
    has_more = len(rows) > page_size
    rows = rows[:page_size]
    last = rows[-1] if has_more else None
    body = data_page_schema.dump({
        "data": rows, "total": _total(args["count"], filters), "page": page, "page_size": page_size,
        "has_more": has_more, "next_cursor": (last["updated_at"], last["id"]) if last else None,
        "watermark": watermark,
    })
    response = conditional_json(body, volatile=("watermark",))
    response.headers[WATERMARK_HEADER] = body["watermark"]
    return response


@blueprint.get("/data/<source>/<id:source_id>")
@documented(path=record_path_schema, query=record_query_schema, responses={200: record_detail_schema},
            errors=(400, 404, 503))
def get_record(source, source_id):
    """One record with its lineage: the runs that first saw it, last changed it and deleted it."""
    key = record_path_schema.load({"source": source, "source_id": source_id})
    args = load_query(record_query_schema, request.args)
    row = db.fetch_one("data_record", {**key, **args})
    if row is None:
        raise NotFound(f"no {key['source']} record with source_id {key['source_id']!r}")
    return record_detail_schema.dump(row)


def _source(row: dict) -> dict:
    return {
        "name": row["name"], "kind": row["kind"], "row_count": row["row_count"], "deleted_count": row["deleted_count"],
        "checkpoint": {"last_processed_id": row["last_processed_id"], "last_processed_at": row["last_processed_at"],
                       "last_cursor": row["last_cursor"], "read_until": row["read_until"]},
        "last_success": {"run_id": row["last_success_run_id"], "at": row["last_success_at"]}
        if row["last_success_run_id"] is not None else None,
        "last_error": {"run_id": row["last_error_run_id"], "at": row["last_error_at"],
                       "error": row["last_error_summary"]} if row["last_error_summary"] is not None else None,
        "last_skip": {"run_id": row["last_skip_run_id"], "at": row["last_skip_at"], "reason": row["last_skip_reason"]}
        if row["last_skip_run_id"] is not None else None,
    }


@blueprint.get("/sources")
@documented(responses={200: sources_schema}, errors=(400, 503), etag="strong")
def list_sources():
    """Every source in the warehouse: kind, live and deleted rows, checkpoint, last successful load, last error and
    last skip."""
    load_query(no_query_schema, request.args)
    return conditional_json(sources_schema.dump({"data": [_source(row) for row in db.fetch_all("sources")]}))
