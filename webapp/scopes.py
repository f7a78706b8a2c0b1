"""What one request may read (issue 24): which sources, and whether operations data (runs, rejects, errors).

Authentication puts the request's Scope on flask.g before any route runs; routes filter by it, and webapp.db
hands it to PostgreSQL, whose row-level security enforces it a second time. A request that reaches a route
without one is refused (fail closed): a path that skipped authentication must not read everything.
"""

import json
from dataclasses import dataclass

from flask import g


@dataclass(frozen=True)
class Scope:
    principal: str | None  # who: "key:<name>" or "oidc:<subject>"; None when the API runs open (SLUICE_AUTH=none)
    sources: frozenset[str] | None  # None: every source ("*")
    operations: bool  # /runs, /runs/<id>/rejects, the error texts of /sources

    def allows(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def source_list(self) -> list[str] | None:
        """The sources as a SQL text[] parameter: None for every source."""
        return None if self.sources is None else sorted(self.sources)

    def only_allowed(self, per_source: dict) -> dict:
        """A mapping keyed by source name, without the sources this scope may not read."""
        return {source: value for source, value in per_source.items() if self.allows(source)}

    def fingerprint(self) -> str:
        """What this scope may read, as text: mixed into ETags so that two scopes never share one."""
        return json.dumps({"sources": self.source_list(), "operations": self.operations})


EVERYTHING = Scope(principal=None, sources=None, operations=True)
# A request without credentials, on the routes that stay open (/health, /openapi.json): it may read nothing.
ANONYMOUS = Scope(principal=None, sources=frozenset(), operations=False)


def current() -> Scope:
    scope = g.get("scope")
    if scope is None:
        raise RuntimeError("no scope on this request: authentication did not run before the route")
    return scope


def open_access() -> None:
    """SLUICE_AUTH=none: every request may read everything."""
    g.scope = EVERYTHING
