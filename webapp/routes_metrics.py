"""/metrics: the API's and the pipeline's metrics in the Prometheus text format, for a scraper whose credential has
the operations scope (anyone when SLUICE_AUTH=none)."""

import logging

from flask import Blueprint, Response, current_app, request
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from webapp import auth, db, metrics, pipeline_metrics
from webapp.openapi import documented
from webapp.schemas import load_query, no_query_schema

blueprint = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)
METRICS_SCHEMA = {"type": "string", "description": "metrics in the Prometheus text exposition format 0.0.4"}


@blueprint.get("/metrics")
@documented(responses={200: METRICS_SCHEMA}, errors=(400,), media_type=CONTENT_TYPE_PLAIN_0_0_4)
def show_metrics():
    """Requests, latency, pool and database errors of every worker, and the pipeline's state per source."""
    auth.require_operations()
    load_query(no_query_schema, request.args)
    registry = metrics.of().scrape_registry()
    try:
        state = pipeline_metrics.read(current_app.config["MAX_STALENESS_HOURS"])
    except db.DatabaseUnavailable as error:
        # the request metrics matter most while the warehouse is away (sluice_db_errors_total counts why):
        # served without the pipeline's gauges, whose absence an alert can see
        log.warning("/metrics without the pipeline's gauges: %s", error)
    else:
        registry.register(pipeline_metrics.PipelineCollector(state))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
