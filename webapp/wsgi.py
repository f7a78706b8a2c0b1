"""Gunicorn entry point: `gunicorn webapp.wsgi:app` (settings from the environment; gunicorn.conf.py names it)."""

import logging
import os

from webapp import create_app

# Gunicorn leaves the root logger bare; without a handler the access lines would be dropped.
logging.basicConfig(level=os.environ.get("SLUICE_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")

app = create_app()
