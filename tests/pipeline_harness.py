"""Whole runs of etl_pipeline with dag.test() against real Postgres and loopback sources."""

import os
from dataclasses import dataclass

import psycopg

from sluice.devtools import local_env, sample_data
from sluice.devtools.source_server import SourceServer
from tests import airflow_env

CHECKSUM = "select md5(coalesce(string_agg(t::text, '|' order by id), '')) from normalized_data t"


@dataclass
class Pipeline:
    database_url: str
    sources: SourceServer

    def run(self, conf: dict | None = None, **kwargs):
        """One DAG run; returns (Airflow run state, its etl_runs row as a dict)."""
        dag_run = airflow_env.load_dag().test(run_conf=conf or {}, **kwargs)
        return str(dag_run.state), self.etl_run(dag_run.run_id)

    def etl_run(self, run_id: str) -> dict | None:
        with psycopg.connect(self.database_url, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute("select * from etl_runs where run_id = %s", (run_id,)).fetchone()

    def rows(self, query: str, params=None) -> list:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, params).fetchall()

    def value(self, query: str, params=None):
        return self.rows(query, params)[0][0]

    def checksum(self) -> str:
        return self.value(CHECKSUM)


def start_sources(api_records: int = 100, csv_rows: int = 300, bad_every: int = 50) -> SourceServer:
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(api_records), page_size=40)
    server.serve_bytes("items.csv", sample_data.csv_bytes(csv_rows, bad_every=bad_every))
    return server


def point_airflow_at(monkeypatch, database_url: str, sources: SourceServer, staging_dir) -> None:
    airflow_env.migrated()
    monkeypatch.setenv("AIRFLOW_CONN_ETL_POSTGRES", local_env.airflow_conn_uri(database_url))
    monkeypatch.setenv("AIRFLOW_CONN_ETL_API", sources.url)
    monkeypatch.setenv("AIRFLOW_CONN_ETL_CSV", sources.url)
    monkeypatch.setenv("SLUICE_STAGING_URL", f"file://{staging_dir}")
    assert os.environ["SLUICE_HTTP_ATTEMPTS"] == "2"
