"""OpenLineage datasets of a source's lane, as plain values: which dataset each step reads and writes, named as
the OpenLineage naming spec names them, with its columns and the rows the step wrote.

Airflow-free; sluice.lineage_task turns a StepLineage into the provider's OperatorLineage. A dataset's namespace never
carries a credential: a URL's userinfo and query are dropped (a query often holds a token), and so is a fragment.
"""

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from sluice import queries

NORMALIZED_TABLE = "normalized_data"
# the column of normalized_data that holds a source's declared fields (sources.Field), one key each
DECLARED_FIELDS_COLUMN = "attributes"
# the port a URL means when it names none: the namespace is scheme://host:port in every case
DEFAULT_PORTS = {"http": 80, "https": 443}
# object stores and local files, named as the OpenLineage spec names them: namespace scheme://bucket, name the key
STORAGE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfss": "abfss", "wasbs": "wasbs"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    fields: tuple["Column", ...] = ()  # nested: a json column's known keys


@dataclass(frozen=True)
class Dataset:
    namespace: str
    name: str
    columns: tuple[Column, ...] = ()
    rows: int | None = None  # rows the step wrote to it (an output); None: not counted


@dataclass(frozen=True)
class StepLineage:
    """What one lane step read and wrote."""

    inputs: tuple[Dataset, ...] = ()
    outputs: tuple[Dataset, ...] = ()


def of_url(url: str) -> Dataset:
    """A source's dataset from the URL it is read at: http(s) as scheme://host:port and the path; an object
    store as scheme://bucket and the key; a local file as file and its path. Never the userinfo or the query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""  # hostname drops user:password@
    if scheme == "file":
        return Dataset("file", parts.path)
    if scheme in STORAGE_SCHEMES:
        return Dataset(f"{STORAGE_SCHEMES[scheme]}://{host}", parts.path.lstrip("/"))
    port = parts.port or DEFAULT_PORTS.get(scheme)
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    return Dataset(f"{scheme}://{netloc}" + (f":{port}" if port else ""), parts.path or "/")


@dataclass(frozen=True)
class Warehouse:
    """Where the warehouse tables live, as the task's connection reached them (never its login or password)."""

    host: str
    port: int
    database: str
    schema: str


def table(warehouse: Warehouse, name: str, columns: tuple[Column, ...] = (), rows: int | None = None) -> Dataset:
    """A PostgreSQL table: namespace postgres://host:port (a socket directory as host is percent-encoded, as in
    sluice.assets), name database.schema.table."""
    return Dataset(f"postgres://{quote(warehouse.host, safe='')}:{warehouse.port}",
                   f"{warehouse.database}.{warehouse.schema}.{name}", columns, rows)


def with_declared_fields(columns: tuple[Column, ...], declared: dict) -> tuple[Column, ...]:
    """normalized_data's columns with the source's declared fields (name -> sources.Field) nested under the
    column that holds them."""
    nested = tuple(Column(name, spec.type) for name, spec in declared.items())
    if not nested:
        return columns
    return tuple(Column(c.name, c.type, nested) if c.name == DECLARED_FIELDS_COLUMN else c for c in columns)


def warehouse_table(conn, name: str, *, rows: int | None = None, declared: dict | None = None) -> Dataset:
    """A warehouse table as the psycopg connection conn reaches it (libpq's host, port and database: never its
    login or password), with its columns (and declared, a source's declared fields, under attributes) and the
    rows a step wrote to it. Its own transaction: a step's later conn.transaction() still commits."""
    with conn.transaction():
        schema, found = conn.execute(queries.query("lineage.sql", "table_columns"), {"table": name}).fetchone()
    columns = with_declared_fields(tuple(Column(column, kind) for column, kind in found), declared or {})
    return table(Warehouse(conn.info.host, conn.info.port, conn.info.dbname, schema), name, columns, rows)
