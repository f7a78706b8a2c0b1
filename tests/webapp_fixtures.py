"""Fixtures of the web API tests: app factories, SQL loaders for warehouse rows, and a pausable TCP proxy."""

import itertools
import selectors
import socket
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb

from webapp import create_app, db

BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
_record_numbers = itertools.count(1)


@pytest.fixture
def make_app():
    """Factory: an app on a database URL (plus config); its pool is closed after the test."""
    apps = []

    def make(url: str, **config):
        app = create_app({"AUTH": "none", "DATABASE_URL": url, "TESTING": True, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        db.warehouse(app).close()


def free_port() -> int:
    """A loopback port nobody listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def closed_port_url() -> str:
    """A URL where no server listens."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def missing_socket_url(tmp_path) -> str:
    """A URL whose Unix socket directory holds no server."""
    return f"postgresql://postgres@/postgres?host={tmp_path}"


def record(source="api", source_id=None, name=None, value=None, description=None, updated_at=BASE_TIME,
           created_at=None, first_seen_run_id="run-1", last_changed_run_id=None, attributes=None) -> dict:
    """A normalized_data row with defaults for what a test does not care about. attributes: the JSON text of its
    typed declared fields, as normalize writes them (text, so that numbers keep every digit)."""
    return {"source": source, "source_id": source_id or f"r{next(_record_numbers)}", "name": name,
            "value": value, "description": description, "created_at": created_at or updated_at,
            "updated_at": updated_at, "first_seen_run_id": first_seen_run_id,
            "last_changed_run_id": last_changed_run_id or first_seen_run_id, "attributes": attributes or "{}"}


def insert_records(url: str, rows: list[dict]) -> list[dict]:
    """Insert normalized_data rows; returns them with their ids, in insertion order."""
    with psycopg.connect(url) as conn:
        for row in rows:
            (row["id"],) = conn.execute(
                "insert into normalized_data (source, source_id, name, value, description, created_at,"
                " updated_at, first_seen_run_id, last_changed_run_id, input_hash, attributes)"
                " values (%(source)s, %(source_id)s, %(name)s, %(value)s, %(description)s, %(created_at)s,"
                " %(updated_at)s, %(first_seen_run_id)s, %(last_changed_run_id)s, 'fixture',"
                " %(attributes)s::jsonb) returning id", {"attributes": "{}", **row}).fetchone()
    return rows


def declare_fields(url: str, source: str, fields: dict[str, str], run_id: str = "run-1") -> None:
    """source_fields rows as normalize writes them: field -> type, in catalog order (replacing the source's)."""
    with psycopg.connect(url) as conn:
        conn.execute("delete from source_fields where source = %s", (source,))
        for position, (field, kind) in enumerate(fields.items()):
            conn.execute("insert into source_fields (source, field, type, path, position, declared_run_id)"
                         " values (%s, %s, %s, %s, %s, %s)", (source, field, kind, field, position, run_id))


def catalog(count: int = 25) -> list[dict]:
    """Rows alternating api/csv whose updated_at comes in ties of three, to test the id tie-breaker."""
    return [record(source="api" if number % 2 else "csv", source_id=f"item-{number}", name=f"Item {number}",
                   value=number * 1.5, description=f"catalog entry {number}",
                   updated_at=BASE_TIME + timedelta(minutes=number // 3))
            for number in range(1, count + 1)]


def newest_first(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: (row["updated_at"], row["id"]), reverse=True)


def insert_run(url: str, run_id: str, status: str = "success", ended_hours_ago: float = 1.0,
               duration_seconds: float = 60.0, error_message: str | None = None, source_counts: dict | None = None,
               records_processed: int = 0, errors: list[dict] | None = None) -> None:
    """An etl_runs row that ended `ended_hours_ago` before the database's now(); `errors`: its failure summaries
    (None: a row written before summaries existed, with error_message alone)."""
    source_counts = source_counts or {}
    totals = {name: sum(counts.get(name, 0) for counts in source_counts.values())
              for name in ("fetched", "inserted", "updated", "unchanged", "rejected")}
    with psycopg.connect(url) as conn:
        conn.execute(
            "insert into etl_runs (run_id, run_type, started_at, ended_at, duration_seconds, records_processed,"
            " status, error_message, errors, fetched, inserted, updated, unchanged, rejected, source_counts)"
            " values (%(run_id)s, 'scheduled',"
            " now() - make_interval(secs => %(ago)s * 3600 + %(duration)s),"
            " now() - make_interval(secs => %(ago)s * 3600),"
            " %(duration)s, %(records_processed)s, %(status)s, %(error_message)s, %(errors)s, %(fetched)s,"
            " %(inserted)s, %(updated)s, %(unchanged)s, %(rejected)s, %(source_counts)s)",
            {"run_id": run_id, "ago": ended_hours_ago, "duration": duration_seconds, "status": status,
             "error_message": error_message, "records_processed": records_processed,
             "errors": None if errors is None else Jsonb(errors),
             "source_counts": Jsonb(source_counts), **totals})


def insert_checkpoint(url: str, source: str, row_count: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("insert into etl_checkpoint (source, row_count, last_run_id) values (%s, %s, 'run-1')"
                     " on conflict (source) do update set row_count = excluded.row_count, last_run_id = 'run-1'",
                     (source, row_count))


def set_source_error(url: str, source: str, run_id: str, text: str | None, summary: dict | None = None) -> None:
    """The source's last failure as etl_checkpoint holds it: the text, and its summary (None: a row written
    before summaries existed)."""
    with psycopg.connect(url) as conn:
        conn.execute("insert into etl_checkpoint (source, row_count, last_run_id) values (%(source)s, 0, 'run-1')"
                     " on conflict (source) do nothing", {"source": source})
        conn.execute("update etl_checkpoint set last_error = %(text)s, last_error_summary = %(summary)s,"
                     " last_error_run_id = %(run_id)s, last_error_at = now() where source = %(source)s",
                     {"source": source, "text": text, "run_id": run_id,
                      "summary": None if summary is None else Jsonb(summary)})


def insert_rejects(url: str, run_id: str, rows: list[dict]) -> None:
    """rejected_records rows of one run: dicts with source, source_id, reason, payload (and stage: normalize)."""
    with psycopg.connect(url) as conn:
        for row in rows:
            conn.execute(
                "insert into rejected_records (run_id, source, source_id, stage, reason, payload)"
                " values (%s, %s, %s, %s, %s, %s)",
                (run_id, row["source"], row.get("source_id"), row.get("stage", "normalize"), row["reason"],
                 Jsonb(row["payload"]) if row.get("payload") is not None else None))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected: closing is all that is left to do
    sock.close()


class PausableProxy:
    """A loopback TCP proxy to a PostgreSQL server; stop() drops every connection, start() listens again."""

    def __init__(self, server_url: str):
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        host, port = info.get("host") or "localhost", int(info.get("port") or 5432)
        self._target = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") else (
            socket.AF_INET, (host, port))
        self._info = info
        self.port = None
        self._listener = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url(self, dbname: str) -> str:
        info = {key: value for key, value in self._info.items() if key not in ("host", "port", "dbname")}
        return psycopg.conninfo.make_conninfo(**info, host="127.0.0.1", port=self.port, dbname=dbname)

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port or 0))
        listener.listen(32)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and every proxied connection, like a database host going away."""
        with self._lock:
            # shutdown() first: close() alone waits for the threads blocked in accept()/select()
            for sock in [*self._sockets, *filter(None, [self._listener])]:
                _shut(sock)
            self._sockets.clear()
            self._listener = None

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stop() closed the listener
            upstream = socket.socket(self._target[0])
            upstream.connect(self._target[1])
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client, upstream) -> None:
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while True:
                try:
                    ready = selector.select(timeout=0.5)
                    if any(sock.fileno() == -1 for sock in peers):
                        return
                    for key, _ in ready:
                        data = key.fileobj.recv(65536)
                        if not data:
                            raise ConnectionError("peer closed")
                        peers[key.fileobj].sendall(data)
                except (OSError, ValueError):
                    with self._lock:
                        for sock in peers:
                            _shut(sock)
                            self._sockets.discard(sock)
                    return
