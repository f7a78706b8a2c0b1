"""What GET /export/<source> serves, as SQL: the chosen columns and declared fields, composed into the named COPY
statements of sql/webapp.sql so that PostgreSQL writes every CSV field and NDJSON line itself."""

from dataclasses import dataclass

from marshmallow import ValidationError
from psycopg2 import sql

from sluice import queries
from webapp.attributes import fragment

SQL_FILE = "webapp.sql"
# the unified columns of every record, in /data's names; id always comes first: it is where an export resumes
COLUMNS = ("id", "source", "source_id", "name", "value", "description", "created_at", "updated_at", "deleted_at")
TIMES = frozenset({"created_at", "updated_at", "deleted_at"})
FORMATS = {"csv": "text/csv", "ndjson": "application/x-ndjson"}  # media types (UTF-8 both; CSV says charset=utf-8)
MAX_PAIRS = 50  # json(b)_build_object takes at most 100 arguments


@dataclass(frozen=True)
class Selection:
    """The columns (unified, in order, id first) and declared fields (field -> type, in order) an export serves;
    attributes: whether an NDJSON line carries the attributes object (fields= named none of them: it does not)."""

    columns: tuple[str, ...]
    fields: dict[str, str]
    attributes: bool


def select(source: str, declared: dict[str, str], fields_text: str | None) -> Selection:
    """Every column and declared field, or those fields= names; a 400 naming an unknown one."""
    if fields_text is None:
        return Selection(COLUMNS, dict(declared), True)
    names = list(dict.fromkeys(fields_text.split(",")))
    for name in names:
        if name not in COLUMNS and name not in declared:
            raise ValidationError({"fields": [
                f"{name!r} is neither a column ({', '.join(COLUMNS)}) nor a declared field of {source} "
                f"(its fields: {', '.join(declared) or 'none'})."]})
    columns = ("id", *(name for name in names if name in COLUMNS and name != "id"))
    chosen = {name: declared[name] for name in names if name not in COLUMNS}
    return Selection(columns, chosen, bool(chosen))


def _column(name: str) -> sql.Composable:
    if name in TIMES:
        return fragment("export_time").format(column=sql.Identifier(name))
    return sql.Identifier(name)


def _field(position: int, name: str, params: dict) -> sql.Placeholder:
    key = f"field_{position}"
    params[key] = name
    return sql.Placeholder(key)


def _csv_columns(selection: Selection, params: dict) -> sql.Composable:
    columns = [sql.SQL("{} as {}").format(_column(name), sql.Identifier(name)) for name in selection.columns]
    for position, (name, kind) in enumerate(selection.fields.items()):
        template = "export_attribute_json" if kind == "json" else "export_attribute_text"
        columns.append(sql.SQL("{} as {}").format(
            fragment(template).format(field=_field(position, name, params)), sql.Identifier(name)))
    return sql.SQL(", ").join(columns)


def _json_line(selection: Selection, params: dict) -> sql.Composable:
    pairs = [sql.SQL("{}, {}").format(sql.Literal(name), _column(name)) for name in selection.columns]
    if selection.attributes:
        fields = [sql.SQL("{key}, {value}").format(key=placeholder, value=fragment("export_attribute_json").format(
                      field=placeholder))
                  for placeholder in (_field(position, name, params) for position, name in enumerate(selection.fields))]
        chunks = [fragment("export_json_attributes").format(pairs=sql.SQL(", ").join(fields[start:start + MAX_PAIRS]))
                  for start in range(0, max(len(fields), 1), MAX_PAIRS)]
        pairs.append(sql.SQL("{}, {}").format(sql.Literal("attributes"), sql.SQL(" || ").join(chunks)))
    return fragment("export_json_line").format(pairs=sql.SQL(", ").join(pairs))


def statement(output: str, selection: Selection, params: dict) -> sql.Composable:
    """The COPY of one export in `output` (csv or ndjson); adds the declared fields' names to params."""
    columns = _csv_columns(selection, params) if output == "csv" else _json_line(selection, params)
    rows = sql.SQL(queries.query(SQL_FILE, "export_rows")).format(columns=columns)
    return sql.SQL(queries.query(SQL_FILE, f"export_{output}")).format(rows=rows)
