"""Fixtures of the authentication tests: the API's read-only role, keys made by the CLI, and an OIDC issuer on
127.0.0.1 (its own RSA keys, discovery document and JWKS over HTTP)."""

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg import sql

from webapp import api_keys


@contextlib.contextmanager
def reader_role(database_url: str):
    """A role like Compose's sluice_reader (docker/postgres-init/02-sluice-reader.sh): it reads every table, writes
    none, and its sessions are read-only; yields the database URL as that role."""
    reader = f"sluice_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login").format(sql.Identifier(reader)))
        admin.execute(sql.SQL("alter role {} set default_transaction_read_only = on").format(sql.Identifier(reader)))
        admin.execute(sql.SQL("grant select on all tables in schema public to {}").format(sql.Identifier(reader)))
    try:
        yield psycopg.conninfo.make_conninfo(database_url, user=reader)
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader)))
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(reader)))


def run_keys(app, *args: str):
    """`flask --app webapp keys <args>` on this app (Flask's CLI runner; click keeps stdout and stderr apart)."""
    return app.test_cli_runner().invoke(args=["keys", *args])


def create_key(app, name: str, sources: str, *options: str) -> str:
    """A new key, as `keys create` prints it (the one line of stdout)."""
    result = run_keys(app, "create", "--name", name, "--sources", sources, *options)
    assert result.exit_code == 0, (result.output, result.exception)
    key = result.stdout.strip()
    assert api_keys.KEY_FORM.match(key), result.stdout
    return key


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict, claims: dict, secret: bytes | None = None) -> str:
    """A JWT assembled by hand: alg none (no signature), or HS256 with `secret` (e.g. the issuer's public key)."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if secret is None:
        return head + "."
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


class Issuer:
    """An OIDC issuer on 127.0.0.1: /.well-known/openid-configuration and /jwks of its current RSA keys."""

    def __init__(self):
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.jwks_fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = {"keys": [issuer.public_jwk(kid) for kid in list(issuer.keys)]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add_key(self) -> str:
        kid = uuid.uuid4().hex[:12]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def public_jwk(self, kid: str) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, kid: str, audience: str, scope: str = "sluice:read:*", subject: str = "alice",
              issuer: str | None = None, lifetime: float = 300, not_before: float = 0, **extra) -> str:
        now = time.time()
        claims = {"iss": issuer or self.url, "aud": audience, "sub": subject, "iat": int(now),
                  "nbf": int(now + not_before), "exp": int(now + lifetime), "scope": scope, **extra}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def issuer():
    server = Issuer()
    yield server
    server.close()
