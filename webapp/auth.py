"""Authentication of every request (SLUICE_AUTH): a Bearer API key or OIDC token becomes the request's Scope on
flask.g, or the request is refused with a 401 that says why; routes refuse what a scope does not allow with 403."""

import logging

from flask import current_app, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, ServiceUnavailable, Unauthorized

from webapp import api_keys, audit, oidc, scopes

log = logging.getLogger(__name__)

REALM = "sluice"
ISSUER_RETRY_SECONDS = 5


def _challenge(**values) -> WWWAuthenticate:
    return WWWAuthenticate("Bearer", {"realm": REALM, **values})


class InsufficientScope(Forbidden):
    """403 with the Bearer challenge RFC 6750 names for it, so a client knows another scope is needed."""

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope),
                ("WWW-Authenticate", _challenge(error="insufficient_scope").to_header())]


def _refused(reason: str, message: str, **who) -> Unauthorized:
    """The 401 of a refused credential, recorded in the audit trail."""
    audit.refused(reason, **who)
    return Unauthorized(message, www_authenticate=_challenge(error="invalid_token", error_description=message))


def _scope_of(token: str) -> scopes.Scope:
    if current_app.config["AUTH"] == "keys":
        try:
            return api_keys.authenticate(token, current_app.extensions["sluice_keys"])
        except api_keys.KeyRefused as refusal:
            digest = api_keys.key_hash(token) if api_keys.KEY_FORM.fullmatch(token) else None
            raise _refused(refusal.reason, str(refusal), key_id=digest and api_keys.key_id(digest),
                           name=refusal.name) from None
    try:
        return current_app.extensions["sluice_oidc"].authenticate(token)
    except oidc.TokenRefused as refusal:
        raise _refused(refusal.reason, str(refusal), subject=refusal.subject) from None
    except oidc.IssuerUnavailable as error:
        log.warning("cannot check a token: the OIDC issuer is unavailable: %s", error)
        raise ServiceUnavailable("the token issuer cannot be reached to check tokens; try again",
                                 retry_after=ISSUER_RETRY_SECONDS) from error


def _open(endpoint: str | None) -> bool:
    """Routes documented open_access (/health, /openapi.json) answer without credentials; an unknown path does not."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    return bool(view is not None and view.openapi.open_access)


def authenticate() -> None:
    """before_request: the request's scope from its credential; 401 without a valid one, except on open routes."""
    g.scope = scopes.ANONYMOUS  # until a credential proves more (fail closed)
    if request.method == "OPTIONS":
        return  # a CORS preflight carries no credentials and reads nothing
    header = request.headers.get("Authorization")
    if header is None:
        if _open(request.endpoint):
            return
        raise Unauthorized("this endpoint needs a credential: send Authorization: Bearer <API key or token>",
                           www_authenticate=_challenge())
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refused("wrong_scheme", "send the credential as Authorization: Bearer <API key or token>")
    g.scope = _scope_of(token)


def require_operations() -> None:
    if not scopes.current().operations:
        raise InsufficientScope("this credential may not read operations data (runs, rejects, errors): "
                                "it needs the operations scope")


def require_sources() -> None:
    if scopes.current().sources == frozenset():
        raise InsufficientScope("this credential may read no source")


def init_app(app) -> None:
    mode = app.config["AUTH"]
    if mode == "none":
        log.warning("SLUICE_AUTH=none: the API serves every source and every run to whoever reaches it; "
                    "use keys or oidc anywhere but a local demo or test")
        app.before_request(scopes.open_access)
        return
    if mode == "keys":
        app.extensions["sluice_keys"] = api_keys.KeyCache()
    else:
        app.extensions["sluice_oidc"] = oidc.Verifier(app.config)
    app.before_request(authenticate)
    app.after_request(audit.request_served)
    app.after_request(_vary)


def _vary(response):
    # registered before CORS's hook, so it runs after it and joins its Vary: Origin into one header
    response.vary.add("Authorization")  # a shared cache must not serve one credential's answer to another
    return response
