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


def _columns(selection: Selection, output: str, params: dict) -> sql.Composable:
    """csv: each column and declared field as a column (a field as its text; json as JSON text). ndjson: the
    columns and one jsonb column, attributes, of the declared fields as /data serves them."""
    columns = [sql.SQL("{} as {}").format(_column(name), sql.Identifier(name)) for name in selection.columns]
    fields = [(_field(position, name, params), kind) for position, (name, kind) in enumerate(selection.fields.items())]
    if output == "csv":
        for (placeholder, kind), name in zip(fields, selection.fields):
            template = "export_attribute_json" if kind == "json" else "export_attribute_text"
            columns.append(sql.SQL("{} as {}").format(fragment(template).format(field=placeholder),
                                                      sql.Identifier(name)))
    elif selection.attributes:
        pairs = [sql.SQL("{}, {}").format(placeholder, fragment("export_attribute_json").format(field=placeholder))
                 for placeholder, _ in fields]
        chunks = [fragment("export_json_attributes").format(pairs=sql.SQL(", ").join(pairs[start:start + MAX_PAIRS]))
                  for start in range(0, max(len(pairs), 1), MAX_PAIRS)]
        if len(chunks) > 1:
            chunks = [sql.SQL("{}::jsonb").format(chunk) for chunk in chunks]
        columns.append(sql.SQL("{} as attributes").format(sql.SQL(" || ").join(chunks)))
    return sql.SQL(", ").join(columns)


def statement(output: str, selection: Selection, params: dict) -> sql.Composable:
    """The COPY of one export in `output` (csv or ndjson); adds the declared fields' names to params."""
    # fragments: their comment lines left out, as they are composed inside another statement
    rows = fragment("export_rows").format(columns=_columns(selection, output, params))
    if output == "ndjson":
        rows = fragment("export_json_lines").format(rows=rows)
    return sql.SQL(queries.query(SQL_FILE, f"export_{output}")).format(rows=rows)
