"""Transport (issue 24): gunicorn serves HTTPS when SLUICE_TLS_CERT and SLUICE_TLS_KEY are set, with HSTS on every
answer; plain HTTP never carries HSTS; one of the two settings alone stops gunicorn before it listens."""

import datetime
import ipaddress
import os
import ssl
import subprocess
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from webapp_fixtures import free_port, make_app  # noqa: F401

from sluice_devtools import demo
from webapp import hooks


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files in folder."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "api.crt", folder / "api.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.mark.slow
def test_gunicorn_serves_https_with_hsts_when_a_certificate_and_key_are_set(tmp_path, database_url):
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_BIND": f"127.0.0.1:{port}", "SLUICE_WORKERS": "1",
           "SLUICE_POOL_MIN": "0"}

    half = subprocess.run(demo.gunicorn_argv(), env={**env, "SLUICE_TLS_CERT": cert}, capture_output=True,
                          text=True, timeout=60)
    assert half.returncode != 0 and "set both SLUICE_TLS_CERT and SLUICE_TLS_KEY" in half.stderr + half.stdout

    trusting = ssl.create_default_context(cafile=cert)  # the client trusts this certificate only
    server = subprocess.Popen(demo.gunicorn_argv(), env={**env, "SLUICE_TLS_CERT": cert, "SLUICE_TLS_KEY": key},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/openapi.json", context=trusting, timeout=2) as response:
                    assert response.status == 200
                    assert response.headers["Strict-Transport-Security"] == hooks.STRICT_TRANSPORT_SECURITY
                    break
            except (OSError, ssl.SSLError):
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not serve HTTPS"
                time.sleep(0.2)
        with pytest.raises(OSError):  # the port speaks TLS only: plain HTTP gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hsts_is_sent_over_https_only(make_app, database_url):
    client = make_app(database_url).test_client()
    assert "Strict-Transport-Security" not in client.get("/").headers
    assert client.get("/", base_url="https://localhost").headers["Strict-Transport-Security"] == "max-age=63072000"
