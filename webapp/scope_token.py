"""The request's scope as the warehouse reads it: a token signed with SLUICE_SCOPE_KEY, set on each transaction.

Row-level security (sql/migrations/018_row_level_security.sql) verifies it once per statement; its form is
`<backend pid>|<expiry ms>|<operations 0/1>|<sources: * or a,b>|<hex HMAC-SHA256 of what precedes>`. Bound to
one connection and a minute, so a token seen anywhere else is worth nothing.
"""

import hashlib
import hmac
import time

from webapp.scopes import Scope

TTL_SECONDS = 60  # longer than any request (statement timeout, gunicorn's 30 s timeout)
SEPARATORS = ("|", ",")


def make(scope: Scope, backend_pid: int, key: bytes, now: float | None = None) -> str:
    if scope.sources is None:
        sources = "*"
    else:
        for name in scope.sources:
            if not name or name == "*" or any(separator in name for separator in SEPARATORS):
                raise ValueError(f"source name {name!r} cannot be put in a scope")
        sources = ",".join(sorted(scope.sources))
    expires_ms = int(((time.time() if now is None else now) + TTL_SECONDS) * 1000)
    payload = f"{backend_pid}|{expires_ms}|{int(scope.operations)}|{sources}"
    return f"{payload}|{hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()}"
