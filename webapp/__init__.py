"""Sluice's read API: a Flask app factory over the warehouse tables the pipeline fills."""

from flask import Flask
from flask_cors import CORS
from werkzeug.routing import PathConverter

from webapp import config as settings
from webapp import (auth, db, errors, exact_json, hooks, metrics, proxies, rate_limits, routes_data, routes_export,
                    routes_health, routes_meta, routes_metrics, routes_runs, routes_schema, routes_stats,
                    source_catalog, tracing)
from webapp.keys_cli import keys_cli


class IdConverter(PathConverter):
    """`<id:...>`: any non-empty text, slashes included, even a leading or a doubled one (`path` refuses those)."""

    regex = "(?s:.+?)"  # (?s): a newline too, so such an id reaches the checks of its path and query
    part_isolating = False  # it spans slashes (werkzeug would infer True from a regex without "/")


def create_app(config=None) -> Flask:
    """An app configured by defaults, then SLUICE_* environment variables, then `config`."""
    app = Flask(__name__, static_folder=None)  # JSON only: no /static route
    app.json = exact_json.ExactJSONProvider(app)  # numeric attributes keep every digit
    # Ids may hold "//" or start with "/": route them as sent, not redirect to another id's URL.
    app.url_map.merge_slashes = False
    app.url_map.converters["id"] = IdConverter
    app.config.from_mapping(settings.defaults())
    app.config.from_prefixed_env("SLUICE")
    if config is not None:
        app.config.from_mapping(config)
    settings.check(app.config)

    metrics.init_app(app)  # first: its clock starts before, and its count runs after, every other hook
    db.init_app(app)
    source_catalog.init_app(app)
    routes_export.init_app(app)
    errors.register(app)
    tracing.init_app(app)  # first of the request hooks: a request another hook refuses is traced too
    hooks.register(app)
    proxies.init_app(app)
    rate_limits.guard_credentials(app)  # before authentication: a blocked address's credentials go unchecked
    auth.init_app(app)  # after the hooks: a URL or body over its limit is refused before any credential is read
    rate_limits.limit_requests(app)  # after authentication: the budget is the principal's
    if app.config["CORS_ORIGINS"]:
        # No cookies ever: a caller sends its key or token in Authorization, so "*" is never paired with cookies.
        CORS(app, origins=app.config["CORS_ORIGINS"], methods=["GET", "HEAD", "OPTIONS"],
             expose_headers=["ETag", "Retry-After", "Sluice-Watermark", "WWW-Authenticate", *rate_limits.HEADERS],
             supports_credentials=False, max_age=600)
    for module in (routes_meta, routes_health, routes_data, routes_export, routes_stats, routes_runs, routes_schema):
        app.register_blueprint(module.blueprint)
    if app.config["METRICS_ENABLED"]:
        app.register_blueprint(routes_metrics.blueprint)
    app.cli.add_command(keys_cli)
    return app
