"""SLUICE_AUTH=oidc against a real issuer on 127.0.0.1 (its own RSA keys; discovery document and JWKS over HTTP):
a valid token reads its scopes; expired, wrong audience or issuer, unknown kid, alg none and HS256 signed with the
public key are 401s; a rotated key is fetched without a restart, and an unknown kid refetches at most so often."""

import time

import pytest
from auth_fixtures import bearer, issuer, unsigned_token  # noqa: F401 (issuer is a fixture)
from webapp_fixtures import catalog, insert_records, make_app  # noqa: F401 (make_app is a fixture)

AUDIENCE = "https://sluice.example/api"


@pytest.fixture
def oidc_app(make_app, database_url, issuer):  # noqa: F811
    insert_records(database_url, catalog(6))
    return make_app(database_url, AUTH="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE,
                    OIDC_LEEWAY_SECONDS=5, OIDC_JWKS_MIN_REFRESH_SECONDS=0)


def refusal(client, token: str) -> tuple[int, str]:
    answer = client.get("/data", headers=bearer(token))
    assert token not in answer.get_data(as_text=True)
    if answer.status_code == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer realm=sluice, error=invalid_token")
    return answer.status_code, answer.json["message"] if answer.status_code != 200 else ""


def test_tokens_are_checked_in_full(oidc_app, issuer):  # noqa: F811
    kid = issuer.add_key()
    client = oidc_app.test_client()
    page = client.get("/data", headers=bearer(issuer.token(kid, AUDIENCE, scope="sluice:read:api")))
    assert page.status_code == 200 and {row["source"] for row in page.json["data"]} == {"api"}
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300,
              "scope": "sluice:read:* sluice:operations"}
    cases = {
        "expired": (issuer.token(kid, AUDIENCE, lifetime=-60), "the token has expired"),
        "not yet valid": (issuer.token(kid, AUDIENCE, not_before=120), "the token is not valid yet (nbf or iat)"),
        "wrong audience": (issuer.token(kid, "https://other.example"),
                           f"the token's aud is not {AUDIENCE!r}"),
        "wrong issuer": (issuer.token(kid, AUDIENCE, issuer="https://evil.example"),
                         f"the token's iss is not {issuer.url!r}"),
        "no subject": (issuer.token(kid, AUDIENCE, subject=""), "the token's sub is not a string"),
        "unknown kid": (issuer.token(kid, AUDIENCE).replace(*_header_kid(kid, "nope")),
                        "the token's signing key (kid) is not in the issuer's JWKS"),
        "alg none": (unsigned_token({"alg": "none", "kid": kid}, claims),
                     "tokens signed with 'none' are not accepted: " + ", ".join(_algorithms())),
        "HS256 with the public key": (unsigned_token({"alg": "HS256", "kid": kid, "typ": "JWT"}, claims,
                                                     issuer.public_pem(kid)),
                                      "tokens signed with 'HS256' are not accepted: " + ", ".join(_algorithms())),
        "RS256 signature of another key": (_resigned(issuer, kid), "the token's signature or form is not valid"),
        "not a JWT": ("sluice_" + "A" * 43, "the bearer token is not a JWT"),
    }
    for case, (token, message) in cases.items():
        assert refusal(client, token) == (401, message), case
    # within the leeway (5 s) an expired token still passes
    assert refusal(client, issuer.token(kid, AUDIENCE, lifetime=-2))[0] == 200


def test_keys_rotate_without_a_restart(oidc_app, issuer):  # noqa: F811
    old = issuer.add_key()
    client = oidc_app.test_client()
    assert refusal(client, issuer.token(old, AUDIENCE))[0] == 200
    new = issuer.add_key()  # the issuer publishes a new key, then signs with it
    assert refusal(client, issuer.token(new, AUDIENCE))[0] == 200
    fetches = issuer.jwks_fetches
    assert refusal(client, issuer.token(new, AUDIENCE))[0] == 200
    assert issuer.jwks_fetches == fetches  # a known kid costs no fetch


def test_an_unknown_kid_refetches_the_jwks_at_most_so_often(make_app, database_url, issuer):  # noqa: F811
    kid = issuer.add_key()
    app = make_app(database_url, AUTH="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE,
                   OIDC_JWKS_MIN_REFRESH_SECONDS=60)
    client = app.test_client()
    assert refusal(client, issuer.token(kid, AUDIENCE))[0] == 200
    forged = issuer.token(kid, AUDIENCE)
    for number in range(20):
        assert refusal(client, forged.replace(*_header_kid(kid, f"forged{number}")))[0] == 401
    assert issuer.jwks_fetches == 1  # twenty forged kids, no refetch within the minute


def test_scopes_come_from_the_configured_claim(make_app, database_url, issuer):  # noqa: F811
    kid = issuer.add_key()
    insert_records(database_url, catalog(4))
    app = make_app(database_url, AUTH="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE,
                   OIDC_SCOPE_CLAIM="permissions")
    client = app.test_client()

    def sources(token):
        answer = client.get("/data?page_size=100", headers=bearer(token))
        return answer.status_code, sorted({row["source"] for row in answer.json.get("data", [])})
    as_list = issuer.token(kid, AUDIENCE, scope="", permissions=["sluice:read:csv", "sluice:read:api"])
    assert sources(as_list) == (200, ["api", "csv"])
    assert sources(issuer.token(kid, AUDIENCE, permissions="sluice:read:csv")) == (200, ["csv"])
    # `scope` is not the configured claim here, and a token granting nothing reads nothing
    assert sources(issuer.token(kid, AUDIENCE, scope="sluice:read:*"))[0] == 403
    runs = client.get("/runs", headers=bearer(issuer.token(kid, AUDIENCE, permissions="sluice:read:api")))
    assert runs.status_code == 403
    runs = client.get("/runs", headers=bearer(issuer.token(kid, AUDIENCE, permissions=["sluice:operations"])))
    assert runs.status_code == 200


def test_an_unreachable_issuer_is_a_503_and_an_insecure_one_is_refused_at_start(make_app, database_url):
    app = make_app(database_url, AUTH="oidc", OIDC_ISSUER="http://127.0.0.1:9", OIDC_AUDIENCE=AUDIENCE)
    answer = app.test_client().get("/data", headers=bearer("eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.e30.c2ln"))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    with pytest.raises(ValueError, match="an https:// URL"):
        make_app(database_url, AUTH="oidc", OIDC_ISSUER="http://issuer.example", OIDC_AUDIENCE=AUDIENCE)
    with pytest.raises(ValueError, match="SLUICE_OIDC_AUDIENCE"):
        make_app(database_url, AUTH="oidc", OIDC_ISSUER="https://issuer.example")


def _algorithms():
    from webapp.oidc import ALGORITHMS
    return ALGORITHMS


def _header_kid(kid: str, other: str) -> tuple[str, str]:
    """(old, new) header segment: the same token naming another kid (its signature no longer matters)."""
    import base64
    import json

    def encode(value: str) -> str:
        return base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": value, "typ": "JWT"},
                                                   separators=(",", ":")).encode()).rstrip(b"=").decode()
    return encode(kid), encode(other)


def _resigned(issuer, kid: str) -> str:  # noqa: F811
    """A token naming kid but signed by another RSA key of the issuer's (not published under that kid)."""
    other = issuer.add_key()
    token = issuer.token(other, AUDIENCE)
    del issuer.keys[other]
    return token.replace(*_header_kid(other, kid))


def test_the_document_declares_the_issuer(oidc_app, issuer):  # noqa: F811
    schemes = oidc_app.test_client().get("/openapi.json").json["components"]["securitySchemes"]
    assert schemes["oidc"] == {"type": "openIdConnect",
                               "openIdConnectUrl": issuer.url + "/.well-known/openid-configuration"}
    assert (schemes["bearerToken"]["scheme"], schemes["bearerToken"]["bearerFormat"]) == ("bearer", "JWT")


@pytest.mark.parametrize("claim, sources, operations", [
    ("sluice:read:api sluice:operations", frozenset({"api"}), True),
    (["sluice:read:*", "other:scope"], None, False),
    ({"sluice:read:*": True, "sluice:operations": True}, frozenset(), False),  # neither a string nor a list
    ("sluice:read: sluice:readapi sluice:operationsx", frozenset(), False),
    (None, frozenset(), False),
])
def test_scope_syntax(claim, sources, operations):
    from webapp.oidc import scope_of
    scope = scope_of({"scope": claim}, "scope", "alice")
    assert (scope.principal, scope.sources, scope.operations) == ("oidc:alice", sources, operations)
