"""The bench's PostgreSQL: the embedded server (or BENCH_DATABASE_URL) and a fresh database per run."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from sluice_devtools import embedded_pg

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")
FLUSH_BEFORE_STEPS = True  # python -m bench --no-checkpoint turns it off
AUTOVACUUM_WAIT_SECONDS = 60


class Server:
    """A server the bench may create databases on; stops the embedded one at close() if it started it."""

    def __init__(self, pg_dir: Path, *, from_env: bool = True):
        """BENCH_DATABASE_URL's server when it is set (unless from_env is false), else the embedded one."""
        self.pg_dir = pg_dir
        self.started_here = False
        self.url = os.environ.get("BENCH_DATABASE_URL") if from_env else None
        self.where = "BENCH_DATABASE_URL" if self.url else f"embedded ({pg_dir})"
        if not self.url:
            self.started_here = not (pg_dir / "postmaster.pid").exists()
            self.url = embedded_pg.start(pg_dir)
        self.created: list[str] = []

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        self.created.append(name)
        return with_database(self.url, name)

    def describe(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            settings = {name: conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()[0]
                        for name in ("server_version", "shared_buffers", "fsync", "synchronous_commit")}
        return f"PostgreSQL {settings.pop('server_version')} {self.where}; " + ", ".join(
            f"{name}={value}" for name, value in settings.items())

    def close(self, keep_databases: bool) -> None:
        if not keep_databases:
            with psycopg.connect(self.url, autocommit=True) as admin:
                for name in self.created:
                    admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if self.started_here:
            embedded_pg.stop(self.pg_dir)


class DebianCluster(Server):
    """A throwaway PostgreSQL 15 cluster from Debian's binaries (initdb, pg_ctl) on a free loopback port,
    fsync off as #16 measures; close() stops it by its pid and deletes it, whatever happened before."""

    def __init__(self, directory: Path, bin_dir: Path = DEBIAN_PG15):
        self.pg_dir = directory
        self.where = f"Debian, a throwaway cluster in {directory}"
        self.started_here = True
        self.created = []
        self.pid: int | None = None
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "data").mkdir(parents=True)
        # Debian's postgres refuses to run as root: as embedded_pg does, run it as its own system user
        as_user: list[str] = []
        if os.geteuid() == 0:
            embedded_pg.make_traversable(directory)
            shutil.chown(directory, "postgres", "postgres")
            shutil.chown(directory / "data", "postgres", "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        port = _free_port()
        try:
            _run([*as_user, str(bin_dir / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            _run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(directory / "data"), "-l", str(directory / "server.log"),
                  "-w", "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
            self.pid = int((directory / "data" / "postmaster.pid").read_text().split()[0])
        except BaseException:
            self.close(keep_databases=True)
            raise
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def close(self, keep_databases: bool) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # fast shutdown; the databases go with the directory
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.pg_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} … exited {done.returncode}: "
                           + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))


def sqlalchemy_url(conninfo: str) -> str:
    """A libpq URL as SQLAlchemy's psycopg2 URL, for Airflow's metadata database (a socket directory as ?host=)."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    auth = quote(info.get("user") or "postgres", safe="")
    if info.get("password"):
        auth += ":" + quote(info["password"], safe="")
    db = quote(info.get("dbname") or "postgres", safe="")
    host, port = info.get("host") or "localhost", info.get("port")
    if host.startswith("/"):
        return f"postgresql+psycopg2://{auth}@/{db}?host={quote(host, safe='')}" + (f"&port={port}" if port else "")
    return f"postgresql+psycopg2://{auth}@{host}{':' + str(port) if port else ''}/{db}"


def with_database(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def as_url(conninfo: str) -> str:
    """A postgresql:// URL for clients that parse URLs themselves (Airflow connections, dlt).

    A socket directory becomes a percent-encoded host; a missing password becomes a dummy one, because
    dlt insists on a password even when the server trusts local connections.
    """
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = quote(info.get("host") or "localhost", safe="")
    user = quote(info.get("user") or "postgres", safe="")
    password = quote(info.get("password") or "unused", safe="")
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}:{password}@{host}{port}/{quote(info.get('dbname') or 'postgres', safe='')}"


def checkpoint(url: str) -> None:
    """Before a timed step, pay the debts of the one before it: the vacuum and analyze its rows would get
    from autovacuum (on 2 cores an autovacuum of a million fresh rows starting mid-step changes the step's
    time by seconds), then a flush of dirty buffers."""
    if not FLUSH_BEFORE_STEPS:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + AUTOVACUUM_WAIT_SECONDS
        while time.monotonic() < deadline and conn.execute(
                "select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'"
                " and datname = current_database()").fetchone()[0]:
            time.sleep(0.2)
        conn.execute("vacuum (analyze)")  # a role that does not own a table gets a warning, not an error
        try:
            conn.execute("checkpoint")
        except psycopg.errors.InsufficientPrivilege:
            pass  # a BENCH_DATABASE_URL role without pg_checkpoint: the timings are just noisier
