"""The warehouse connection pool: created lazily, one read-only connection per request on flask.g, each transaction
begun with the request's scope (scopes.current()), which the warehouse's row-level security enforces."""

import hashlib
import logging
import re
import threading

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from flask import current_app, g
from psycopg2 import sql
from psycopg2.pool import PoolError, ThreadedConnectionPool

from sluice import queries
from webapp import exact_json, metrics, scope_token, scopes, tracing

log = logging.getLogger(__name__)

SQL_FILE = "webapp.sql"
# Errors after which a connection cannot be trusted again: the server or the socket went away.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
# How a prepared statement is planned (data_begin sets it per transaction): "generic" plans once per connection
# and statement text, for statements whose best plan no parameter value changes (the /data first page: 0.38 ->
# 0.10 ms of the server's time at 1M rows); "custom" plans each execution with its values, skipping only the parse
# and rewrite (a search, whose generic plan would scan the table).
PLAN_CACHE_MODES = {"generic": "force_generic_plan", "custom": "force_custom_plan"}
# Statement texts a connection keeps prepared: /data's filters make a handful; declared-field filters (in-lists of
# any length) could make many, which past this run unprepared.
MAX_PREPARED = 100
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class DatabaseUnavailable(Exception):
    """The warehouse cannot answer now (down, unreachable, too slow or out of connections): a 503."""


def _failure(kind: str, message: str) -> DatabaseUnavailable:
    """The 503 to raise, counted in sluice_db_errors_total by kind (metrics.DB_ERROR_KINDS)."""
    metrics.of().db_errors.labels(kind).inc()
    return DatabaseUnavailable(message)


class KeepingPool(ThreadedConnectionPool):
    """psycopg2's pool, except that a connection given back is kept (up to maxconn) rather than closed whenever
    minconn are idle already: with more requests at once than POOL_MIN, that pool opened a connection (a backend
    started, authenticated, its settings applied) for a share of requests and closed it again after them. POOL_MIN
    are opened at first use; more as concurrent requests need them, and those stay."""

    def _putconn(self, conn, key=None, close=False):
        minconn, self.minconn = self.minconn, self.maxconn  # putconn holds the pool's lock around this
        try:
            super()._putconn(conn, key, close)
        finally:
            self.minconn = minconn


class WarehouseConnection(psycopg2.extensions.connection):
    """A connection that knows the statements it has prepared: one the pool opens (a replacement for a broken one
    too) starts with none, as its server session does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


class Warehouse:
    """A ThreadedConnectionPool made on first use, so the app starts while the database is down."""

    def __init__(self, config, pool_connections=None):
        self.dsn = config["DATABASE_URL"]
        self.min_connections = config["POOL_MIN"]
        self.max_connections = config["POOL_MAX"]
        self.statement_timeout_ms = config["STATEMENT_TIMEOUT_MS"]
        self.connect_timeout_seconds = config["CONNECT_TIMEOUT_SECONDS"]
        self.scope_key = config["SCOPE_KEY"]
        self._pool = None
        self._lock = threading.Lock()
        self.pool_connections = pool_connections  # the sluice_db_pool_connections gauge, kept at each change

    def _connect_options(self) -> dict:
        # Set at connection start so no request pays a round trip for them: every transaction is
        # read-only and sees one snapshot (a page and its total agree), no statement runs for long.
        options = (f"-c statement_timeout={self.statement_timeout_ms}"
                   " -c default_transaction_read_only=on"
                   r" -c default_transaction_isolation=repeatable\ read"
                   " -c TimeZone=UTC")
        return {"connect_timeout": self.connect_timeout_seconds, "options": options,
                "application_name": "sluice-webapp", "connection_factory": WarehouseConnection}

    def pool(self) -> ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = KeepingPool(
                    self.min_connections, self.max_connections, self.dsn, **self._connect_options())
            return self._pool

    def checkout(self):
        """A connection from the pool; DatabaseUnavailable when none can be had."""
        try:
            conn = self.pool().getconn()
        except PoolError as error:
            raise _failure("unavailable", f"all {self.max_connections} database connections are in use") from error
        except CONNECTION_ERRORS as error:
            log.warning("cannot connect to the warehouse: %s", str(error).strip())
            raise _failure("unavailable", "database unreachable") from error
        self._count_connections()
        # jsonb numbers as Decimal: a float would drop digits of a numeric attribute (no query: the oid is known)
        psycopg2.extras.register_default_jsonb(conn, loads=exact_json.loads)
        return conn

    def give_back(self, conn, broken: bool) -> None:
        """Return a connection; a broken one is closed so the pool reconnects when the server is back."""
        if not broken and not conn.closed:
            try:
                conn.rollback()
            except CONNECTION_ERRORS:
                broken = True
        self.pool().putconn(conn, close=broken or bool(conn.closed))
        self._count_connections()

    def _count_connections(self) -> None:
        if self.pool_connections is None:
            return
        pool = self.pool()
        # psycopg2's pool has no public count: _used holds the lent connections, _pool the idle ones
        self.pool_connections.labels("in_use").set(len(pool._used))
        self.pool_connections.labels("idle").set(len(pool._pool))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and not self._pool.closed:
                self._pool.closeall()
            self._pool = None


def init_app(app) -> None:
    app.extensions["sluice_warehouse"] = Warehouse(app.config, metrics.pool_gauge(app))
    app.teardown_appcontext(_give_back_connection)


def warehouse(app=None) -> Warehouse:
    return (app or current_app).extensions["sluice_warehouse"]


def get_db():
    """This request's connection, taken from the pool on first use."""
    if "db" not in g:
        g.db = warehouse().checkout()
        g.db_statements = 0
    return g.db


def _discard_connection() -> None:
    conn = g.pop("db", None)
    if conn is not None:
        warehouse().give_back(conn, broken=True)


def _give_back_connection(_error=None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        warehouse().give_back(conn, broken=False)


def fetch_all(name: str, params: dict | None = None, parts: dict | None = None,
              sql_file: str = SQL_FILE, *, begin: str | None = None, plan: str | None = None) -> list[dict]:
    """Rows of the named query of sql/webapp.sql (or sql_file) as dicts; database trouble becomes
    DatabaseUnavailable. parts fill the query's {slots} with psycopg2.sql fragments (webapp.attributes).
    begin: a named prelude of webapp.sql that takes scope_token and begins a transaction of the query's own, sent
    with it in autocommit mode (no BEGIN, no ROLLBACK: one round trip); None: the query joins the request's
    transaction, begun with enter_scope. plan (with begin "data_begin"): the query runs as a statement prepared on
    the connection, planned as PLAN_CACHE_MODES[plan] says."""
    store = warehouse()
    # A pooled connection whose server restarted fails on its first statement: retry that statement
    # on the next connection (at most the whole pool), so one restart costs clients no errors.
    for attempt in range(store.max_connections + 1):
        conn = get_db()
        first_statement = g.db_statements == 0
        statement, values, preparing = queries.query(sql_file, name), params or {}, None
        if plan is not None:
            text = sql.SQL(statement).format(**(parts or {})).as_string(conn)
            statement, values, preparing = as_prepared(conn, text, values, plan)
        statement, values = _scoped(conn, store, statement, values, begin)
        if parts is not None and plan is None:
            statement = sql.SQL(statement).format(**parts)
        if begin is not None:
            conn.autocommit = True  # the prelude begins the transaction; it ends with the query string
        try:
            with conn.cursor() as cursor, tracing.database_span(name, statement, conn):
                cursor.execute(statement, values)
                g.db_statements += 1
                if preparing is not None:
                    conn.prepared.add(preparing)
                # plain dicts from tuples: RealDictCursor's item-by-item rows cost 9x as much (60 µs a /data page)
                columns = [column.name for column in cursor.description]
                return [dict(zip(columns, row)) for row in cursor.fetchall()]
        except psycopg2.errors.FeatureNotSupported as error:
            if plan is None:
                raise
            _discard_connection()
            if preparing is not None:
                raise
            # "cached plan must not change result type": a migration changed a table under a statement the session
            # prepared before it; a connection that has not prepared it yet answers (the pool opens new ones)
            log.info("discarded a connection whose prepared %s outlived a schema change: %s", name,
                     str(error).strip())
            continue
        except (psycopg2.errors.QueryCanceled, psycopg2.errors.InsufficientPrivilege) as error:
            if preparing is not None:
                _discard_connection()  # whether its PREPARE ran before the failure is unknown: a fresh session
            raise statement_failure(error, name, store.statement_timeout_ms) from error
        except CONNECTION_ERRORS as error:
            _discard_connection()
            if first_statement and conn.closed:
                log.info("discarded a dead pooled connection (attempt %d): %s", attempt + 1, str(error).strip())
                continue
            log.warning("warehouse query %s failed: %s", name, str(error).strip())
            raise _failure("unavailable", "database unreachable") from error
        except psycopg2.Error:
            if preparing is not None:
                _discard_connection()  # as above: the session may hold a statement conn.prepared does not list
            raise
        finally:
            if begin is not None and not conn.closed:
                conn.autocommit = False
    raise _failure("unavailable", "database unreachable")


def fetch_all_after_watermark(name: str, params: dict, parts: dict, plan: str) -> list[dict]:
    """fetch_all in one round trip and a read-committed transaction of its own (data_begin): the request's scope,
    then the watermark (which the query reads as current_setting('sluice.watermark')), then the query, whose
    snapshot is taken after the watermark was read, as a prepared statement planned the plan way (PLAN_CACHE_MODES).
    Ends the request's open transaction first, if any."""
    end_transaction()
    return fetch_all(name, params, parts, begin="data_begin", plan=plan)


def as_prepared(conn: WarehouseConnection, text: str, params: dict, plan: str) -> tuple[str, dict, str | None]:
    """EXECUTE of text as a statement prepared on conn, preceded by its PREPARE the first time (so in the same round
    trip), its values (those of text's %(name)s placeholders, and data_begin's plan_cache_mode), and the name the
    PREPARE gives (None when none is sent). The name is text's hash: the same on every connection, never another
    text's. A connection holding MAX_PREPARED runs a new text as it is."""
    values = {**params, "plan_cache_mode": PLAN_CACHE_MODES[plan]}
    name = "sluice_" + hashlib.sha256(text.encode()).hexdigest()[:24]
    if name not in conn.prepared and len(conn.prepared) >= MAX_PREPARED:
        return text, values, None
    names = list(dict.fromkeys(PLACEHOLDER.findall(text)))
    execute = f"execute {name}({', '.join(f'%({key})s' for key in names)})" if names else f"execute {name}"
    if name in conn.prepared:
        return execute, values, None
    # $n for each named placeholder; the server infers each one's type from where the text uses it (its casts)
    numbered = PLACEHOLDER.sub(lambda match: f"${names.index(match.group(1)) + 1}", text).rstrip().removesuffix(";")
    return f"prepare {name} as {numbered};\n{execute}", values, name


def statement_failure(error: Exception, name: str, timeout_ms: int) -> DatabaseUnavailable:
    """The 503 of a statement the server cancelled (its timeout) or refused, or whose connection broke."""
    if isinstance(error, psycopg2.errors.LockNotAvailable):  # lock_timeout (an export waiting on a bulk load)
        return _failure("timeout", f"the query waited longer than {timeout_ms} ms for a lock (a load is writing)")
    if isinstance(error, psycopg2.errors.QueryCanceled):
        return _failure("timeout", f"the query took longer than the {timeout_ms} ms statement timeout")
    if isinstance(error, psycopg2.errors.InsufficientPrivilege):
        # a scope the warehouse refuses (its message says why, never the token) or a table the role may not read
        log.error("warehouse query %s refused: %s", name, str(error).strip())
        return _failure("refused", "the warehouse refused this API's access; its log says why")
    log.warning("warehouse query %s failed: %s", name, str(error).strip())
    return _failure("unavailable", "database unreachable")


def detach():
    """The request's connection, handed over: the request's teardown no longer returns it to the pool. For a
    response that streams after its request ended; the taker gives it back (warehouse().give_back)."""
    conn = get_db()
    g.pop("db")
    return conn


def _scoped(conn, store: Warehouse, statement: str, params: dict, begin: str | None) -> tuple[str, dict]:
    """The statement, preceded by the request's scope when it begins a transaction (by begin's prelude when
    given): one round trip for both (psycopg2 sends them as one query string; the result is the route's
    statement's)."""
    if begin is None and conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        return statement, params
    token = scope_token.make(scopes.current(), conn.get_backend_pid(), store.scope_key)
    return f"{queries.query(SQL_FILE, begin or 'enter_scope')}\n{statement}", {**params, "scope_token": token}


def fetch_one(name: str, params: dict | None = None, parts: dict | None = None,
              sql_file: str = SQL_FILE) -> dict | None:
    rows = fetch_all(name, params, parts, sql_file)
    return rows[0] if rows else None


def end_transaction() -> None:
    """Roll back the request's transaction, if any: its next statement begins a new one (a new snapshot, and
    the scope the request has by then)."""
    conn = g.get("db")
    if conn is None:
        return
    try:
        conn.rollback()
    except CONNECTION_ERRORS as error:
        _discard_connection()
        raise _failure("unavailable", "database unreachable") from error


def execute_own_transactions(sql_file: str, name: str, params: dict) -> None:
    """Run a named script that begins and ends its own transactions (a read-write one, for instance) in
    autocommit mode on the request's connection, between two of the request's read-only transactions."""
    end_transaction()
    conn = get_db()
    conn.autocommit = True
    try:
        statement = queries.query(sql_file, name)
        with conn.cursor() as cursor, tracing.database_span(name, statement, conn):
            cursor.execute(statement, params)
    except CONNECTION_ERRORS as error:
        _discard_connection()
        raise _failure("unavailable", "database unreachable") from error
    finally:
        if not conn.closed:
            conn.autocommit = False


def fetch_one_before_snapshot(name: str, params: dict | None = None) -> dict | None:
    """fetch_one in a transaction of its own, ended at once: the request's next statement begins a new one.

    A repeatable read transaction reads from the snapshot of its first statement, so only this way are the
    request's rows read from a snapshot taken after this query ran (the /data watermark needs that). Each of the
    two transactions begins with the request's scope (_scoped).
    """
    row = fetch_one(name, params)
    try:
        g.db.rollback()
    except CONNECTION_ERRORS as error:
        _discard_connection()
        raise _failure("unavailable", "database unreachable") from error
    return row
