"""Publish a batch the quality gate held back, after a person looked at it (pipeline.release):

    python -m sluice.release <source> <run_id> --by <your name>

or from the Airflow UI: trigger etl_pipeline with the param release {"source": ..., "run_id": ...}, which publishes
it instead of fetching that source, recorded as released by the user who triggered the run.

The warehouse is the one SLUICE_ADMIN_DATABASE_URL (else SLUICE_DATABASE_URL) names: a URL in the environment,
never on the command line, where other users' `ps` would show its password. Who released it and when is recorded
with the batch's quality results (GET /runs/<run_id>/quality, /sources)."""

import argparse
import logging
import os
import sys
from collections.abc import Mapping

import psycopg

from sluice import pipeline, settings
from sluice.errors import ConfigError, InvalidSource

URL_VARIABLES = ("SLUICE_ADMIN_DATABASE_URL", "SLUICE_DATABASE_URL")
# the DAG param that releases a held batch from the Airflow UI
PARAM = "release"


def asked(value: object) -> tuple[str, str] | None:
    """The run's release param as (source, run_id of the held batch); None when the run releases nothing."""
    if value in (None, {}):
        return None
    if (not isinstance(value, Mapping) or set(value) != {"source", "run_id"}
            or not all(isinstance(item, str) and item.strip() for item in value.values())):
        raise InvalidSource(f'{PARAM} must be an object like {{"source": "posts", "run_id": "<the run that held it>"}} '
                            f"naming a held batch (GET /runs/<run_id>/quality shows it), got {value!r}: nothing was "
                            "released")
    return value["source"], value["run_id"]


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
