"""Where a step's time goes: every SQL statement it runs, by its name in sql/*.sql, with its seconds.

While a step's measured call runs, psycopg's Connection.execute and Cursor.copy are timed. A statement is
named by the `-- name:` of the query it came from; what is left of the step's time (Python, fetching,
marshmallow on the slow path) is reported by the report as the step's remainder.
"""

import contextlib
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql

from sluice import queries, warehouse

SQL_FILES = ("pipeline.sql", "schema.sql", "quality.sql")


def _known_statements() -> dict[str, str]:
    """Statement text -> name, with {raw_table} filled in as warehouse fills it; and, for a statement composed of
    fragments, its text up to the first one -> name (PREFIX marks those keys)."""
    known = {}
    for filename in SQL_FILES:
        for name, text in queries.load(filename).items():
            known[text] = name
            for table in warehouse.RAW_TABLES.values():
                known[text.replace("{raw_table}", f'"{table}"')] = name
            # a fragment opening with its placeholder (or nearly) would name every statement
            if text.find("{") >= MIN_OPENING:
                known[PREFIX + text[:text.index("{")]] = name
    return known


PREFIX = "\0prefix:"
MIN_OPENING = 16


def _name(known: dict[str, str], query, conn) -> str:
    text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
    if text in known:
        return known[text]
    # the longest opening of a composed statement that this one starts with
    opening = max((key for key in known if key.startswith(PREFIX) and text.startswith(key[len(PREFIX):])),
                  key=len, default=None)
    return known[opening] if opening else " ".join(text.split())[:60]


@contextlib.contextmanager
def timed(log: list) -> Iterator[None]:
    """Append (name, seconds) to log for each statement run through psycopg meanwhile."""
    known = _known_statements()
    execute, copy = psycopg.Connection.execute, psycopg.Cursor.copy

    def timed_execute(self, query, params=None, **kwargs):
        start = time.perf_counter()
        try:
            return execute(self, query, params, **kwargs)
        finally:
            log.append((_name(known, query, self), time.perf_counter() - start))

    @contextlib.contextmanager
    def timed_copy(self, statement, params=None, **kwargs):
        start = time.perf_counter()
        try:
            with copy(self, statement, params, **kwargs) as active:
                yield active
        finally:
            log.append((_name(known, statement, self.connection), time.perf_counter() - start))

    psycopg.Connection.execute, psycopg.Cursor.copy = timed_execute, timed_copy
    try:
        yield
    finally:
        psycopg.Connection.execute, psycopg.Cursor.copy = execute, copy
