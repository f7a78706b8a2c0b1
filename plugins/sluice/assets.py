"""Lineage: each source's rows in normalized_data are an Airflow Asset, and each source's upsert emits an event
when its rows changed, with its counts, so a downstream DAG can be scheduled on "source orders changed".

Airflow-free: what to emit, as plain values; airflow_edge.upsert turns them into asset events.

The source is in the asset's name and in its URI's query: Airflow 3 activates only one asset per URI (the
asset_active table is unique on uri; a second name on the same URI is left inactive with an ASSET_CONFLICT
DAG warning), so the sources' assets cannot share one URI. The postgres provider's URI normalizer requires
exactly /<database>/<schema>/<table> as the path and keeps the query, so the source goes there.
"""

from dataclasses import asdict, dataclass
from urllib.parse import quote, urlencode

from sluice import progress
from sluice.results import Upserted

# the alias upsert declares as its outlet: the sources are only known at run time (the catalog is a param)
ALIAS = "sluice.normalized_data"
TABLE = "public/normalized_data"


@dataclass(frozen=True)
class Warehouse:
    """Where normalized_data lives, as the etl_postgres connection reaches it (never its login or password)."""

    host: str
    port: int
    database: str


@dataclass(frozen=True)
class Event:
    """One asset event: the asset (name and URI) and the event's extra."""

    name: str
    uri: str
    extra: dict


def name(source: str) -> str:
    return f"{ALIAS}.{source}"


def uri(warehouse: Warehouse, source: str) -> str:
    """postgres://<host>:<port>/<database>/public/normalized_data?source=<source>, as Airflow normalizes it (a
    socket directory as host is percent-encoded)."""
    return (f"postgres://{quote(warehouse.host, safe='')}:{warehouse.port}/{quote(warehouse.database, safe='')}"
            f"/{TABLE}?{urlencode({'source': source})}")


def changed(result: Upserted) -> bool:
    """Whether the upsert changed the source's rows in normalized_data (a soft delete or undelete is a change, and
    so are rows a changed declaration re-normalized from raw)."""
    return result.written > 0


def events(upserted: Upserted, warehouse: Warehouse, *, run_id: str) -> list[Event]:
    """The event of the source's upsert when its rows changed, with its counts and the run id; none when they
    did not (an upsert that failed, its delete guard's refusal among them, emits nothing: its task fails)."""
    if not changed(upserted):
        return []
    return [Event(name(upserted.source), uri(warehouse, upserted.source), {**asdict(upserted), "run_id": run_id})]


def described(event: Event) -> str:
    """The event's counts as the task log's plain words: "294 inserted, 0 updated, 2 deleted, 0 undeleted"."""
    return ", ".join(f"{progress.count(event.extra[name])} {name}"
                     for name in ("inserted", "updated", "deleted", "undeleted"))
