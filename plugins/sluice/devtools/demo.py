"""`make demo`: the whole job offline — embedded Postgres, sample sources on loopback, one real DAG run."""

import os
import sys
import time

import psycopg

from sluice.devtools import embedded_pg, local_env, serve_samples

LOG = local_env.STATE / "logs" / "demo.log"


def warehouse_url() -> str:
    """DATABASE_URL when set, else a `sluice` database on the embedded server under .sluice/pg."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    server = embedded_pg.start(local_env.STATE / "pg")
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = 'sluice'").fetchone():
            conn.execute("create database sluice")
    info = psycopg.conninfo.conninfo_to_dict(server)
    return psycopg.conninfo.make_conninfo(**{**info, "dbname": "sluice"})


def summary(url: str) -> str:
    with psycopg.connect(url) as conn:
        run = conn.execute(
            "select run_id, status, fetched, inserted, updated, unchanged, rejected, duration_seconds, error_message"
            " from etl_runs order by id desc limit 1").fetchone()
        rows = conn.execute("select source, count(*) from normalized_data group by 1 order by 1").fetchall()
        rejects = conn.execute(
            "select source, coalesce(source_id, '-'), reason from rejected_records where run_id = %s order by id",
            (run[0],)).fetchall()
        checkpoints = conn.execute(
            "select source, last_processed_id, total_processed from etl_checkpoint order by 1").fetchall()
    lines = [f"etl_runs: {run[0]}  status={run[1]}  fetched={run[2]} inserted={run[3]} updated={run[4]}"
             f" unchanged={run[5]} rejected={run[6]}  ({run[7]:.2f}s)"]
    if run[8]:
        lines.append(f"  error: {run[8]}")
    lines.append("normalized_data rows: " + ", ".join(f"{source}={count}" for source, count in rows))
    lines.append("checkpoints: " + ", ".join(f"{s} last_id={i} total={t}" for s, i, t in checkpoints))
    lines.append(f"rejected this run ({len(rejects)}):")
    lines += [f"  {source} id={source_id}: {reason}" for source, source_id, reason in rejects[:12]]
    if len(rejects) > 12:
        lines.append(f"  ... and {len(rejects) - 12} more")
    return "\n".join(lines)


def main() -> int:
    started = time.monotonic()
    url = warehouse_url()
    with serve_samples.serve() as sources:
        env = local_env.airflow_env(local_env.STATE / "airflow", warehouse_url=url,
                                    api_url=sources.url, csv_url=sources.url)
        print(f"warehouse: {url}\nsources:   {sources.url}/posts and {sources.url}/items.csv")
        local_env.migrate(env, LOG)
        print(f"running etl_pipeline with `airflow dags test` (log: {LOG.relative_to(local_env.REPO)}) ...")
        local_env.airflow(["dags", "test", "etl_pipeline"], env, LOG)
    print(summary(url))
    print(f"demo took {time.monotonic() - started:.1f}s; run `make demo` again: the second run inserts and updates 0 rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
