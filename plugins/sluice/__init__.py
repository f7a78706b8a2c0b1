"""Sluice: load a JSON HTTP API and a CSV at a URL into PostgreSQL, idempotently."""

__version__ = "0.1.0"
