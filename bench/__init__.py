"""Sluice's benchmark harness: `python -m bench --help` from the repository root (or `make bench`).

See bench/README.md.
"""
