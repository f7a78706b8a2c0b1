"""OIDC bearer tokens: JWTs signed by the configured issuer's keys (its JWKS, found by discovery), and their scopes.

Scope syntax, in the claim SLUICE_OIDC_SCOPE_CLAIM (a space-separated string, as OAuth's `scope`, or a list):
`sluice:read:<source>` reads one source, `sluice:read:*` every source, `sluice:operations` the runs, rejects and
the sources' errors. Other values are ignored.
"""

import json
import logging
import threading
import time

import jwt
import requests
from jwt.exceptions import (ExpiredSignatureError, ImmatureSignatureError, InvalidAudienceError,
                            InvalidIssuerError, InvalidTokenError, MissingRequiredClaimError, PyJWKError,
                            PyJWTError)

from webapp.scopes import Scope

log = logging.getLogger(__name__)

# Asymmetric only: never "none", never HS* (an HMAC "signed" with the issuer's public key would verify).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HTTP_TIMEOUT_SECONDS = 5
MAX_DOCUMENT_BYTES = 512 * 1024
READ_PREFIX = "sluice:read:"
OPERATIONS = "sluice:operations"


class TokenRefused(Exception):
    """A presented token that gives no access; reason is a short word for the audit trail."""

    def __init__(self, reason: str, message: str, subject: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.subject = subject


class IssuerUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be read: tokens cannot be checked now (a 503)."""


def _get_json(url: str) -> dict:
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT_SECONDS, allow_redirects=False, stream=True)
        body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
        response.close()
    except requests.RequestException as error:
        raise IssuerUnavailable(f"{url}: {type(error).__name__}") from error
    if response.status_code != 200 or len(body) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"{url} answered {response.status_code} ({len(body)} bytes)")
    try:
        document = json.loads(body)
    except ValueError as error:
        raise IssuerUnavailable(f"{url} did not answer JSON") from error
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"{url} did not answer a JSON object")
    return document


class KeySet:
    """The issuer's signing keys by kid: fetched on first use, again after max_age, and on an unknown kid at most
    once every min_refresh seconds (so a flood of forged kids cannot make us hammer the issuer)."""

    def __init__(self, issuer: str, min_refresh: float, max_age: float):
        self.issuer = issuer
        self.min_refresh = min_refresh
        self.max_age = max_age
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid: the key, and the alg it declares
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        discovery = _get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if discovery.get("issuer") != self.issuer:
            raise IssuerUnavailable(f"the discovery document names issuer {discovery.get('issuer')!r}, "
                                    f"not SLUICE_OIDC_ISSUER={self.issuer!r}")
        jwks_uri = discovery.get("jwks_uri")
        # https, as the issuer's own URL must be (plain http only for a loopback issuer: tests)
        schemes = ("https://", "http://") if self.issuer.startswith("http://") else ("https://",)
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(schemes):
            raise IssuerUnavailable(f"the discovery document has no {' or '.join(schemes)} jwks_uri")
        keys = {}
        for entry in _get_json(jwks_uri).get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            try:
                keys[entry["kid"]] = (jwt.PyJWK(entry), entry.get("alg"))
            except PyJWKError as error:  # a key type or algorithm we do not use: skip it, keep the others
                log.warning("JWKS key %r skipped: %s", entry.get("kid"), error)
        self._keys = keys
        self._fetched_at = time.monotonic()

    def get(self, kid: str) -> tuple[jwt.PyJWK, str | None] | None:
        with self._lock:
            age = None if self._fetched_at is None else time.monotonic() - self._fetched_at
            if age is None or age >= self.max_age or (kid not in self._keys and age >= self.min_refresh):
                try:
                    self._fetch()
                except IssuerUnavailable as error:
                    if kid not in self._keys:
                        raise
                    # an issuer down for a moment must not stop tokens of keys we already hold
                    log.warning("JWKS refresh failed, keeping the keys fetched %.0f s ago: %s", age, error)
            return self._keys.get(kid)


def scope_of(claims: dict, claim: str, subject: str) -> Scope:
    values = claims.get(claim)
    # a space-separated string (OAuth's scope) or a list of strings; any other shape grants nothing
    values = (values.split() if isinstance(values, str) else
              [value for value in values if isinstance(value, str)] if isinstance(values, list) else [])
    sources = {value[len(READ_PREFIX):] for value in values if value.startswith(READ_PREFIX)}
    sources.discard("")
    return Scope(principal=f"oidc:{subject}", sources=None if "*" in sources else frozenset(sources),
                 operations=OPERATIONS in values)


class Verifier:
    def __init__(self, config):
        self.issuer = config["OIDC_ISSUER"]
        self.audience = config["OIDC_AUDIENCE"]
        self.claim = config["OIDC_SCOPE_CLAIM"]
        self.leeway = config["OIDC_LEEWAY_SECONDS"]
        self.keys = KeySet(self.issuer, config["OIDC_JWKS_MIN_REFRESH_SECONDS"], config["OIDC_JWKS_MAX_AGE_SECONDS"])

    def authenticate(self, token: str) -> Scope:
        """The scope of a presented JWT; TokenRefused when it gives no access, IssuerUnavailable."""
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise TokenRefused("malformed_token", "the bearer token is not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise TokenRefused("algorithm_not_allowed", f"tokens signed with {str(algorithm)[:20]!r} are not "
                                                        f"accepted: {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str):
            raise TokenRefused("unknown_kid", "the token names no signing key (kid)")
        found = self.keys.get(kid)
        if found is None:
            raise TokenRefused("unknown_kid", "the token's signing key (kid) is not in the issuer's JWKS")
        key, declared_algorithm = found
        if declared_algorithm is not None and declared_algorithm != algorithm:
            raise TokenRefused("algorithm_not_allowed", "the token's alg is not the one its key declares")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except ExpiredSignatureError:
            raise TokenRefused("expired_token", "the token has expired") from None
        except ImmatureSignatureError:
            raise TokenRefused("token_not_yet_valid", "the token is not valid yet (nbf or iat)") from None
        except InvalidAudienceError:
            raise TokenRefused("wrong_audience", f"the token's aud is not {self.audience!r}") from None
        except InvalidIssuerError:
            raise TokenRefused("wrong_issuer", f"the token's iss is not {self.issuer!r}") from None
        except MissingRequiredClaimError as error:
            raise TokenRefused("missing_claim", f"the token has no {error.claim!r} claim") from None
        except PyJWTError:  # a bad signature, a key of another type than alg, a malformed claim...
            raise TokenRefused("invalid_signature", "the token's signature or form is not valid") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenRefused("missing_claim", "the token's sub is not a string")
        return scope_of(claims, self.claim, subject)
