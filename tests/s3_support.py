"""moto's S3 server for the tests: a real S3 API on a free loopback port, not a mock of boto or fsspec."""

import contextlib
import json

import pytest


@contextlib.contextmanager
def moto_bucket(conn_id: str, bucket: str):
    """A bucket on a fresh moto server, and the Airflow aws connection `conn_id` to it; yields the boto3 client.
    Give each module its own connection id: Airflow caches a connection's filesystem, endpoint included, for
    the process."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
                "conn_type": "aws", "login": "testing", "password": "testing",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                  aws_secret_access_key="testing", region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
            yield client
    finally:
        server.stop()
