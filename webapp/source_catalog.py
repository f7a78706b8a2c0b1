"""Each worker's copy of what a `source=` request is checked against: the sources the warehouse knows and the
fields each declares, per scope, trusted for CACHE_SECONDS (as the key cache trusts a key), so such a request costs
/data's one round trip rather than four.

A source loaded for the first time shows up at once: a source the copy does not know is read again before it is
refused. A declaration that changes (a run applies a new `fields:` block) shows up within CACHE_SECONDS.
"""

import threading
import time
from dataclasses import dataclass

from flask import current_app

from webapp import db, scopes

CACHE_SECONDS = 1.0
MAX_ENTRIES = 1000  # scopes (sets of sources) held at once; more clears the copy


@dataclass(frozen=True)
class Catalog:
    known: tuple[str, ...]  # the sources the warehouse knows (an etl_checkpoint row), in name order
    fields: dict[str, dict[str, str]]  # source -> its declared fields (field -> type), in catalog order


class CatalogCache:
    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self._entries: dict[tuple | None, tuple[float, Catalog]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple | None, fresh: bool = False) -> Catalog:
        """The catalog of a scope's sources (key: its source list, None for all); fresh: read it again now."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and not fresh and now - entry[0] < self.seconds:
            return entry[1]
        catalog = _read(list(key) if key is not None else None)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now, catalog)
        return catalog


def _read(sources: list[str] | None) -> Catalog:
    # under the request's scope, as row-level security filters it: a source it may not read is not in it
    known = tuple(row["source"] for row in db.fetch_all("known_sources", {"sources": sources}))
    fields: dict[str, dict[str, str]] = {}
    for row in db.fetch_all("source_fields", {"source": None, "sources": sources}):
        fields.setdefault(row["source"], {})[row["field"]] = row["type"]
    return Catalog(known, fields)


def init_app(app) -> None:
    app.extensions["sluice_source_catalog"] = CatalogCache()


def _cache() -> CatalogCache:
    return current_app.extensions["sluice_source_catalog"]


def _key() -> tuple | None:
    sources = scopes.current().source_list()
    return tuple(sources) if sources is not None else None


def known_sources(source: str | None = None) -> tuple[str, ...]:
    """The sources this request's scope may read; read again when source is not among them."""
    catalog = _cache().get(_key())
    if source is not None and source not in catalog.known:
        catalog = _cache().get(_key(), fresh=True)
    return catalog.known


def declared_fields(source: str) -> dict[str, str]:
    """The fields source declares, field -> type, in catalog order."""
    return dict(_cache().get(_key()).fields.get(source, {}))
