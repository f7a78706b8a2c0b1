"""JSON responses with an ETag, answered with 304 when the client already has the same body."""

import hashlib

from flask import jsonify, request

from webapp import scopes


def _etag(scope: scopes.Scope, body: bytes) -> str:
    # the scope is hashed in: two scopes never share an ETag (nor a cached answer), even over equal bodies
    return hashlib.sha256(scope.fingerprint().encode() + b"\n" + body).hexdigest()


def conditional_json(body: dict, volatile: tuple[str, ...] = ()):
    """`volatile` fields, new on every request (the /data watermark), are left out of the ETag, so it still
    matches while the rest is the same; such an ETag is weak: equal ones mean equal bodies but for those."""
    response = jsonify(body)
    scope = scopes.current()
    if volatile:
        stable = jsonify({key: value for key, value in body.items() if key not in volatile}).get_data()
        response.set_etag(_etag(scope, stable), weak=True)
    else:
        # strong: equal hashes mean byte-identical bodies (the JSON encoder sorts keys, so it is stable)
        response.set_etag(_etag(scope, response.get_data()))
    response.headers["Cache-Control"] = "no-cache"  # cache, but ask again each time
    return response.make_conditional(request)
