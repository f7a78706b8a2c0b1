"""Versioned migrations of the warehouse: sql/migrations/NNN_name.sql once each, in order, and sql/functions.sql.

schema_version records each applied migration with its file's checksum; schema_functions records the
checksum of sql/functions.sql (code, replaced whole when it changes). A current warehouse is recognised by
reading those two small tables alone (AccessShare on them, which only DDL on them would wait for), so a run
takes no lock on any table that holds data. Otherwise the schema advisory lock is taken, waiting at most
lock_timeout_seconds, and each change is applied in a transaction of its own that re-reads what is applied
under that lock: concurrent runs apply every migration exactly once.
"""

import contextlib
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg

from sluice import locks, queries
from sluice.errors import LockTimeout

FUNCTIONS = "functions.sql"
MIGRATIONS = "migrations"
_MIGRATION_NAME = re.compile(r"\d{3}_[a-z0-9_]+\.sql")


class MigrationError(Exception):
    """The warehouse's recorded schema does not fit this code's migration files."""


@dataclasses.dataclass(frozen=True)
class Script:
    path: Path
    text: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def version(self) -> int:
        return int(self.name[:3])

    @property
    def checksum(self) -> str:
        # of the text as read, newlines translated: a checkout with CRLF line ends has the same checksum
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Changes:
    """What one migrate() applied: nothing on a current warehouse."""

    migrations: tuple[str, ...] = ()
    functions_replaced: bool = False

    def __str__(self) -> str:
        if not self.migrations and not self.functions_replaced:
            return "the warehouse schema is current"
        done = [f"applied {', '.join(self.migrations)}"] if self.migrations else []
        return "; ".join(done + ([f"replaced the functions of {FUNCTIONS}"] if self.functions_replaced else []))


@dataclasses.dataclass(frozen=True)
class _Applied:
    migrations: dict[int, tuple[str, str]]  # version: (file name, checksum)
    functions_checksum: str | None


def q(name: str) -> str:
    return queries.query("schema.sql", name)


def migration_scripts() -> list[Script]:
    """The migration files under the SQL folder, by version; a misnamed or doubled one is an error."""
    folder = queries.SQL_DIR / MIGRATIONS
    scripts = []
    for path in sorted(folder.glob("*.sql")):
        if not _MIGRATION_NAME.fullmatch(path.name):
            raise MigrationError(f"{path}: a migration file is named NNN_name.sql (three digits, lowercase name)")
        scripts.append(Script(path, path.read_text(encoding="utf-8")))
    for earlier, later in zip(scripts, scripts[1:]):
        if earlier.version == later.version:
            raise MigrationError(f"{earlier.path} and {later.path} have the same version")
    if not scripts:
        raise MigrationError(f"{folder}: no migration files")
    return scripts


def migrate(conn: psycopg.Connection, *, lock_timeout_seconds: float) -> Changes:
    """Apply the missing migrations and changed functions; on a current warehouse, return having locked nothing."""
    scripts = migration_scripts()
    functions = Script(queries.SQL_DIR / FUNCTIONS, (queries.SQL_DIR / FUNCTIONS).read_text(encoding="utf-8"))
    with conn.transaction():
        applied = _read_applied(conn)
    missing = _missing(applied, scripts)
    replaced = False
    if applied.functions_checksum != functions.checksum:
        # before the migrations: a migration's trigger or index expression needs its function to exist
        with _schema_transaction(conn, lock_timeout_seconds, functions):
            if _read_applied(conn).functions_checksum != functions.checksum:
                conn.execute(functions.text)
                conn.execute(q("record_functions"), {"file": FUNCTIONS, "checksum": functions.checksum})
                replaced = True
    done = []
    for script in missing:
        with _schema_transaction(conn, lock_timeout_seconds, script):
            # read again under the lock: a concurrent run may have applied it meanwhile
            if script in _missing(_read_applied(conn), scripts):
                conn.execute(script.text)
                conn.execute(q("record_migration"),
                             {"version": script.version, "name": script.name, "checksum": script.checksum})
                done.append(script.name)
    return Changes(tuple(done), replaced)


def _read_applied(conn) -> _Applied:
    if not conn.execute(q("bookkeeping_exists")).fetchone()[0]:
        return _Applied({}, None)
    migrations = {version: (name, checksum) for version, name, checksum in conn.execute(q("applied_migrations"))}
    row = conn.execute(q("functions_checksum"), {"file": FUNCTIONS}).fetchone()
    return _Applied(migrations, row[0] if row else None)


def _missing(applied: _Applied, scripts: list[Script]) -> list[Script]:
    """The scripts not applied yet, in order, after checking that those applied are these very files."""
    by_version = {script.version: script for script in scripts}
    for version, (name, checksum) in sorted(applied.migrations.items()):
        script = by_version.get(version)
        if script is None:
            raise MigrationError(
                f"the warehouse has migration {name} applied, which {queries.SQL_DIR / MIGRATIONS} does not "
                f"have: a newer Sluice migrated it; run that version or a later one")
        if script.name != name:
            raise MigrationError(f"{script.path}: migration {version:03d} was applied to this warehouse as {name}; "
                                 f"restore that name")
        if script.checksum != checksum:
            raise MigrationError(f"{script.path} was changed after it was applied to this warehouse; restore it "
                                 f"and make the change a new migration")
    return [script for script in scripts if script.version not in applied.migrations]


@contextlib.contextmanager
def _schema_transaction(conn, lock_timeout_seconds: float, script: Script) -> Iterator[None]:
    """A transaction holding the schema advisory lock, to apply script; an error or a lock wait past the
    timeout rolls it back and names the script."""
    try:
        with conn.transaction():
            # the timeout bounds the waits of the script's DDL too: an ALTER TABLE queued behind a long reader
            # would otherwise queue every later reader of that table behind itself
            conn.execute(queries.query("pipeline.sql", "set_lock_timeout"),
                         {"timeout": locks.timeout(lock_timeout_seconds)})
            conn.execute(queries.query("pipeline.sql", "lock_schema"))
            conn.execute(q("create_bookkeeping"))
            yield
    except psycopg.errors.LockNotAvailable as exc:
        raise LockTimeout(
            f"{script.path}: waited more than {lock_timeout_seconds:g}s for a lock another session holds (another "
            f"run migrating the warehouse, or a long query on a table the script changes); nothing of it was "
            f"applied") from exc
    except psycopg.Error as exc:
        raise MigrationError(f"{script.path} failed, nothing of it was applied: {exc}") from exc
