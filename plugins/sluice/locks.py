"""How long a statement waits for a lock another transaction holds: one helper, one meaning of 0, for every step."""

import contextlib
from collections.abc import Iterator

from sluice import queries


def timeout(seconds: float) -> str:
    """PostgreSQL's lock_timeout for a wait of at most `seconds`. 0 means do not wait (at least 1 ms): PostgreSQL's
    own 0 would mean wait forever, the opposite of what SLUICE_LOCK_TIMEOUT=0 asks."""
    return f"{max(1, round(seconds * 1000))}ms"


@contextlib.contextmanager
def waiting_at_most(conn, seconds: float) -> Iterator[None]:
    """Within the current transaction, the statements inside wait at most `seconds` for a lock (LockNotAvailable
    after that); the statements after wait as long as it takes again. A failure inside leaves the setting to the
    transaction's (or savepoint's) rollback, which undoes it."""
    conn.execute(queries.query("pipeline.sql", "set_lock_timeout"), {"timeout": timeout(seconds)})
    yield
    conn.execute(queries.query("pipeline.sql", "set_lock_timeout"), {"timeout": "0"})
