"""The staging sweep on S3 (moto's S3 server on loopback): SLUICE_STAGING_URL at a bucket's root shared with
other people's objects, which the sweep must never remove (issue #22)."""

import time

import pytest

from sluice import staging
from tests.s3_support import moto_bucket

HOUR = 3600
RETENTION = 72 * HOUR
BUCKET = "data-lake"
FOREIGN = {
    "customer_exports/2026/march.csv": b"id,total\n1,10\n",
    "report.csv": b"not a folder",
    # the run-folder name shape, but no marker: nobody's run
    f"{staging.run_folder_name('scheduled__2026-01-01')}/notes.txt": b"a look-alike",
    # a marker copied out of the folder it was made for
    f"backup/.sluice-run": f"sluice run folder {staging.run_folder_name('old-run')}\n".encode(),
}


@pytest.fixture(scope="module")
def s3():
    """(boto3 client, the bucket's root as an ObjectStoragePath) on moto's S3 server, on a free loopback port.
    The connection id is this module's own: Airflow caches a connection's filesystem for the process."""
    from airflow.sdk import ObjectStoragePath

    with moto_bucket("sweep_s3", BUCKET) as client:
        yield client, ObjectStoragePath(f"s3://sweep_s3@{BUCKET}/")


def keys(client) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


@pytest.fixture
def bucket(s3):
    client, root = s3
    for key in keys(client):
        client.delete_object(Bucket=BUCKET, Key=key)
    for key, body in FOREIGN.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return client, root


def test_sweep_of_a_bucket_root_never_touches_other_objects(bucket):
    client, root = bucket
    # S3 keeps no backdated times: the sweep runs in the future instead, when everything is past the retention
    assert staging.sweep(root, older_than_seconds=RETENTION, now=time.time() + RETENTION + HOUR) == []
    assert keys(client) == FOREIGN


def test_sweep_of_a_bucket_root_removes_only_old_marked_run_folders(bucket):
    client, root = bucket
    folders = {}
    for run_id in ("failed-run", "this-run"):
        folders[run_id] = staging.make_run_folder(root / staging.run_folder_name(run_id))
        with (folders[run_id] / "api.copy").open("wb") as staged:
            staged.write(b"staged")
    this = folders["this-run"].name

    # young: kept
    assert staging.sweep(root, older_than_seconds=RETENTION, now=time.time(), keep=this) == []
    # past the retention: removed, but for the run's own folder and what is not Sluice's
    assert staging.sweep(root, older_than_seconds=RETENTION, now=time.time() + RETENTION + HOUR, keep=this) == [
        folders["failed-run"].name]
    assert keys(client) == {**FOREIGN, f"{this}/{staging.RUN_FOLDER_MARKER}": f"sluice run folder {this}\n".encode(),
                            f"{this}/api.copy": b"staged"}
