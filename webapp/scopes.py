"""What one request may read (issue 24): which sources, and whether operations data (runs, rejects, errors).

Authentication puts the request's Scope on flask.g before any route runs; routes filter by it, and webapp.db
hands it to PostgreSQL, whose row-level security enforces it a second time. A request that reaches a route
without one is refused (fail closed): a path that skipped authentication must not read everything.
"""

from dataclasses import dataclass

from flask import g


@dataclass(frozen=True)
class Scope:
    principal: str | None  # who: "key:<name>" or "oidc:<subject>"; None when the API runs open (SLUICE_AUTH=none)
    sources: frozenset[str] | None  # None: every source ("*")
    operations: bool  # /runs, /runs/<id>/rejects, the error texts of /sources

    def allows(self, source: str) -> bool:
        return self.sources is None or source in self.sources


EVERYTHING = Scope(principal=None, sources=None, operations=True)


def current() -> Scope:
    scope = g.get("scope")
    if scope is None:
        raise RuntimeError("no scope on this request: authentication did not run before the route")
    return scope


def open_access() -> None:
    """SLUICE_AUTH=none: every request may read everything."""
    g.scope = EVERYTHING
