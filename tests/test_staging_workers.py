"""Staged files across workers: an ingest result names the worker that wrote its file, and store_raw's error
for a file it cannot open names the file and both workers; staging on S3 streams in parts."""

import os

import psycopg
import pytest

from sluice import pipeline, settings
from sluice.errors import StagedFileMissing
from sluice.results import Ingested, from_xcom
from tests.s3_support import moto_bucket


def test_an_ingest_result_carries_its_writer_through_xcom():
    result = Ingested(source="csv", uri="s3://conn@bucket/run/csv.copy", records=3, kind="csv", staged_by="127.0.0.2")
    assert from_xcom(result.to_xcom()) == result
    # a result of a release before staged_by still reads
    assert Ingested.from_xcom({"step": "ingest", "source": "csv", "uri": "/x"}).staged_by is None


def test_store_raw_of_a_local_file_another_worker_wrote_says_it_is_not_on_this_worker(tmp_path, database_url):
    missing = f"file://{tmp_path}/run/api.copy"
    result = Ingested(source="api", uri=missing, kind="api", staged_by="worker-a")
    with psycopg.connect(database_url) as conn, pytest.raises(StagedFileMissing) as failed:
        pipeline.store_raw(conn, result, run_id="r1", settings=settings.load(), worker="worker-b")
    message = str(failed.value)
    assert message.startswith(f"api: the staged file {missing} is not on this worker (worker-b); worker-a wrote it")
    assert "SLUICE_STAGING_URL" in message and "s3://" in message


@pytest.fixture(scope="module")
def s3_staging():
    """moto's S3 server on loopback with a bucket, and an Airflow aws connection to it (one server for the
    module: Airflow caches a connection's filesystem, endpoint included, for the process)."""
    with moto_bucket("stage", "staging") as client:
        yield client


def test_s3_staging_writes_a_large_file_in_parts_and_reads_it_back(s3_staging):
    from sluice import airflow_edge

    uri = "s3://stage@staging/run/csv.copy"
    block = airflow_edge.STAGING_BLOCK_BYTES
    chunk = os.urandom(1024 * 1024)
    with airflow_edge.open_staged(uri, "wb") as out:
        for _ in range(2 * block // len(chunk) + 1):
            out.write(chunk)
    head = s3_staging.head_object(Bucket="staging", Key="run/csv.copy", PartNumber=1)
    # a multipart upload: the object has parts, each one block, never the whole file in one buffer
    assert head["PartsCount"] == 3 and head["ContentLength"] == block
    with airflow_edge.open_staged(uri, "rb") as staged:
        assert staged.read(len(chunk)) == chunk


def test_store_raw_of_a_missing_object_names_it_and_its_writer(s3_staging, database_url):
    from sluice import airflow_edge

    uri = "s3://stage@staging/run/api.copy"
    result = Ingested(source="api", uri=uri, kind="api", staged_by="127.0.0.2")
    with psycopg.connect(database_url) as conn, pytest.raises(StagedFileMissing) as failed:
        pipeline.store_raw(conn, result, airflow_edge.open_staged, run_id="r1", settings=settings.load(),
                           worker="127.0.0.3")
    assert str(failed.value).startswith(f"api: the staged object {uri} cannot be read on 127.0.0.3; 127.0.0.2 wrote it")
