"""/sources/<source>/fields: a source's declared fields, the top-level fields its records carried (with their JSON
types and an example record) and what changed per run, as store_raw recorded them (sluice.contracts)."""

from flask import Blueprint, request
from werkzeug.exceptions import NotFound

from webapp import audit, auth, db, scopes
from webapp.openapi import documented
from webapp.schemas import (MAX_FIELDS_SHOWN, MAX_REJECT_TEXT_CHARS, load_query, no_query_schema,
                            source_fields_schema, source_path_schema)

blueprint = Blueprint("schema", __name__)


@blueprint.get("/sources/<source>/fields")
@documented(path=source_path_schema, query=no_query_schema, responses={200: source_fields_schema},
            errors=(400, 404, 503))
def show_fields(source):
    """A source's declared fields, the fields its records carried, and what changed per run."""
    auth.require_sources()
    key = source_path_schema.load({"source": source})
    load_query(no_query_schema, request.args)
    # a source the credential may not read is answered as one that does not exist
    if not scopes.current().allows(key["source"]) or not db.fetch_one("source_fields_known", key)["found"]:
        raise NotFound(f"no source named {key['source']!r} was loaded, declared or observed")
    bounds = {**key, "limit": MAX_FIELDS_SHOWN, "max_text": MAX_REJECT_TEXT_CHARS}
    audit.records([key["source"]], 1)
    return source_fields_schema.dump({
        "source": key["source"],
        "declared": db.fetch_all("source_declared_fields", key),
        "observed": db.fetch_all("source_observed_fields", bounds),
        "observed_total": db.fetch_one("source_observed_count", key)["total"],
        "changes": db.fetch_all("source_field_changes", bounds),
        "changes_total": db.fetch_one("source_field_changes_count", key)["total"],
    })
