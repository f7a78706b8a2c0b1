"""Publish a batch the quality gate held back, after a person looked at it (pipeline.release):

    python -m sluice.release <source> <run_id> --by <your name>

The warehouse is the one SLUICE_ADMIN_DATABASE_URL (else SLUICE_DATABASE_URL) names: a URL in the environment,
never on the command line, where other users' `ps` would show its password. Who released it and when is recorded
with the batch's quality results (GET /runs/<run_id>/quality, /sources)."""

import argparse
import logging
import os
import sys

import psycopg

from sluice import pipeline, settings
from sluice.errors import ConfigError

URL_VARIABLES = ("SLUICE_ADMIN_DATABASE_URL", "SLUICE_DATABASE_URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("run_id")
    parser.add_argument("--by", required=True, help="who looked at the batch and releases it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = next((os.environ[name] for name in URL_VARIABLES if os.environ.get(name)), None)
    if url is None:
        print(f"no warehouse: set {' or '.join(URL_VARIABLES)}", file=sys.stderr)
        return 2
    with psycopg.connect(url) as conn:
        try:
            upserted = pipeline.release(conn, args.source, args.run_id, released_by=args.by, settings=settings.load())
        except ConfigError as exc:
            print(f"not released: {exc}", file=sys.stderr)
            return 1
    print(f"{args.source}: released the batch of run {args.run_id}: {upserted.inserted} inserted, "
          f"{upserted.updated} updated, {upserted.deleted} deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
