"""A source's declaration in the warehouse: its declared fields (source_fields), its typed view in schema `sources`,
and the input key it was last normalized with, which tells normalize to re-normalize the source from raw.

normalize calls declare() under the source's lock, in its own transaction, so the view, the fields and the rows
change together.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from sluice import queries
from sluice.errors import ViewInUse

log = logging.getLogger(__name__)

SCHEMA = "sources"
# a declared field's type -> the SQL type of its view column (json: jsonb, read with ->, not cast)
SQL_TYPES = {"text": "text", "integer": "bigint", "numeric": "numeric", "boolean": "boolean",
             "timestamp": "timestamptz", "date": "date"}


def q(name: str) -> str:
    return queries.query("declarations.sql", name)


@dataclass(frozen=True)
class Declared:
    """What declare() found: renormalize, the source's raw rows must be normalized again (its input key changed
    since it was last normalized); removed, the fields its view no longer has."""

    renormalize: bool
    removed: tuple[str, ...] = ()


def declare(conn, source: str, fields: Mapping, input_key: str, *, run_id: str) -> Declared:
    """Record the source's declaration (fields: name -> sources.Field) for this run, replacing its typed view and
    source_fields rows when the fields changed. ViewInUse when another object depends on a view to replace."""
    keys = {"source": source}
    stored_key = conn.execute(q("stored_key"), keys).fetchone()
    if stored_key is None:
        # a source normalized before declarations were kept: re-normalize what no longer matches, once
        renormalize = conn.execute(q("source_has_rows"), keys).fetchone()[0]
    else:
        # the run that changed the key redoes its normalize (store_raw cleared): its rows from raw are redone too
        renormalize = stored_key[0] != input_key or stored_key[1] == run_id
    if stored_key is None or stored_key[0] != input_key:
        conn.execute(q("record_key"), {**keys, "input_key": input_key, "run_id": run_id})
    wanted = [(name, spec.type, spec.path, spec.required) for name, spec in fields.items()]
    stored = [tuple(row) for row in conn.execute(q("stored_fields"), keys).fetchall()]
    view = f"{SCHEMA}.{source}"
    if stored == wanted and conn.execute(q("view_exists"), {"view": view}).fetchone()[0]:
        return Declared(renormalize)
    removed = tuple(name for name, *_ in stored if name not in fields)
    for name in removed:
        log.warning("%s: field %r is no longer declared: it leaves the typed view %s (its values stay in "
                    "normalized_data.attributes until the rows are normalized again)", source, name, view)
    _replace_view(conn, source, fields)
    conn.execute(q("forget_fields"), keys)
    for position, (name, kind, path, required) in enumerate(wanted):
        conn.execute(q("record_field"), {**keys, "field": name, "type": kind, "path": path, "required": required,
                                         "position": position, "run_id": run_id})
    log.info("%s: typed view %s has %s", source, view, ", ".join(f"{name} {kind}" for name, kind, *_ in wanted)
             or "the unified columns only")
    return Declared(renormalize, removed)


def _replace_view(conn, source: str, fields: Mapping) -> None:
    view = sql.Identifier(SCHEMA, source)
    name = f"{SCHEMA}.{source}"
    dependents = [row[0] for row in conn.execute(q("view_dependents"), {"view": name}).fetchall()]
    if dependents:
        raise _in_use(source, name, dependents)
    try:
        conn.execute(sql.SQL(q("drop_view")).format(view=view))
    except psycopg.errors.DependentObjectsStillExist as exc:  # a dependent pg_depend's rewrite rules do not show
        raise _in_use(source, name, [exc.diag.message_detail or "see the error detail"]) from exc
    columns = []
    for field, spec in fields.items():
        parts = {"key": sql.Literal(field), "column": sql.Identifier(field)}
        if spec.type == "json":
            columns.append(sql.SQL(q("json_column")).format(**parts))
        else:
            columns.append(sql.SQL(q("typed_column")).format(**parts, type=sql.SQL(SQL_TYPES[spec.type])))
    conn.execute(sql.SQL(q("create_view")).format(view=view, source=sql.Literal(source),
                                                 columns=sql.SQL(" ").join(columns)))


def _in_use(source: str, view: str, dependents: list[str]) -> ViewInUse:
    return ViewInUse(
        f"{source}: the declared fields changed, so the typed view {view} must be replaced, but "
        f"{', '.join(dependents)} depend{'s' if len(dependents) == 1 else ''} on it and would be dropped with it. "
        f"Nothing of {source} was normalized. Drop {'it' if len(dependents) == 1 else 'them'} (recreate after the "
        f"run), or restore the previous declaration, then run again")
