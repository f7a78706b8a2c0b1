"""Replay from raw: a run's `replay` param (a list of source names, or true for every source) rebuilds those
sources' rows in normalized_data from their raw tables with today's mapping and rules, fetching nothing.

A replayed source's lane runs its usual steps: ingest reads nothing (no connection, no request), store_raw writes
no raw row, normalize takes every stored raw record of the source (the path a changed declaration takes, made
whole: warehouse.normalize with replay), upsert writes the rows that come out different and the ones missing,
and deletes nothing; the checkpoint stays where it is. Each step holds the source's lock as always
(warehouse.source_transaction), so a replay and a normal run of the same source wait for each other.
"""

from collections.abc import Iterable, Mapping

from sluice.errors import InvalidSource
from sluice.results import Ingested
from sluice.sources import Source

PARAM = "replay"


def selected(params: Mapping, names: Iterable[str]) -> frozenset[str]:
    """The sources the run replays: none (false, [] or absent), every one of names (true), or the listed ones,
    each of which must be among names (the run's catalog)."""
    value = params.get(PARAM)
    known = list(names)
    if value in (None, False, []):
        return frozenset()
    if value is True:
        return frozenset(known)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise InvalidSource(f"{PARAM} must be true (every source) or a list of source names, got {value!r}: "
                            "nothing was replayed")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidSource(f"{PARAM} names {', '.join(map(repr, unknown))}, not a source of this run's catalog "
                            f"({', '.join(sorted(known))}): nothing was replayed. Name the sources as the catalog does")
    return frozenset(value)


def replays(params: Mapping, source: str) -> bool:
    """Whether this run replays the source (init_schema checked the param against the catalog)."""
    value = params.get(PARAM)
    return value is True or (isinstance(value, list) and source in value)


def ingested(source: Source) -> Ingested:
    """What ingest returns for a replayed source: nothing staged, not a whole read (so nothing can be deleted)."""
    return Ingested(source=source.name, uri="", records=0, whole_read=False, fetch_seq=0, kind=source.kind,
                    replay=True)
