# Sluice: `make demo` runs the whole job offline; `make run SOURCES=catalog.yaml` runs your own sources once;
# `make test` runs the test suite. Each installs first: the demo, run, up and serve only what they run (runtime).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --quiet --disable-pip-version-check

.PHONY: install runtime tools demo run test test-distributed serve up down bench backup restore clean

# everything: the runtime, the test tools (requirements-dev.txt) and the system tools the tests use
install: $(VENV)/.installed tools

# what the demo, make run, make up and make serve run: Sluice, Airflow, gunicorn, the embedded PostgreSQL
runtime: $(VENV)/.runtime

# docker-compose only validates docker-compose.yaml here (tests/test_compose.py); no engine is needed.
# redis-server is the Celery broker of make test-distributed, started on loopback by the test itself.
# prometheus brings promtool, which checks and unit-tests ops/prometheus/rules.yml (tests/test_alert_rules.py).
# postgresql: a server built with SSL (the embedded one is not), which tests/test_postgres_tls.py starts on loopback.
tools:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null); } || \
	  echo "warning: docker-compose is missing and could not be installed (needs root); tests/test_compose.py will fail"
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null); } || \
	  echo "warning: redis-server is missing and could not be installed (needs root); make test-distributed will fail"
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null); } || \
	  echo "warning: promtool is missing and could not be installed (needs root); tests/test_alert_rules.py will fail"
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null); } || \
	  echo "warning: Debian's postgresql is missing and could not be installed (needs root); tests/test_postgres_tls.py will fail"

# The pinned runtime set (with the build backend), then Sluice and its dev tools editable: every process imports
# this checkout's code from the venv, no PYTHONPATH. No build isolation, so the build uses the pinned setuptools.
$(VENV)/.runtime: pyproject.toml devtools/pyproject.toml requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -r requirements.txt setuptools -c constraints.txt
	$(PIP) install --no-build-isolation -e . -e ./devtools -c constraints.txt
	touch $@

# the test tools on top, pinned by the same constraints
$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install -r requirements-dev.txt -c constraints.txt
	touch $@

demo: runtime
	$(PY) -m sluice_devtools.demo

# your own catalog once (README "Your own sources"): make run SOURCES=path/to/catalog.yaml
run: runtime
	$(PY) -m sluice_devtools.run_catalog $(abspath $(SOURCES))

# one pytest worker per core (pytest-xdist); a file's tests share a worker, its module fixtures and servers
test: install
	$(PY) -m pytest -n auto --dist loadfile

# Two Celery workers, Redis, an S3 server and Airflow on loopback (tests/distributed/; minutes, needs root)
test-distributed: install
	$(PY) -m pytest -m distributed -s tests/distributed

# gunicorn.conf.py holds every gunicorn setting (gthread workers, limits); SLUICE_WORKERS, SLUICE_THREADS tune it.
# It asks for API keys (SLUICE_AUTH=keys, the default): .venv/bin/flask --app webapp keys create --name NAME --sources '*'
serve: runtime
	DATABASE_URL=$${DATABASE_URL:?set DATABASE_URL to the warehouse (the reader role)} \
	  SLUICE_SCOPE_KEY=$${SLUICE_SCOPE_KEY:?set SLUICE_SCOPE_KEY to the key installed in the warehouse (README, Who may read what)} \
	  SLUICE_BIND=$${SLUICE_BIND:-127.0.0.1:$${SLUICE_API_PORT:-5000}} $(VENV)/bin/gunicorn --config gunicorn.conf.py

# The million-row benchmark (not part of make test): make bench BENCH_ARGS="--rows 100000"
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# SOURCES=path/to/catalog.yaml: the stack's DAG reads that catalog (SLUICE_SOURCES_FILE)
up: runtime
	$(if $(SOURCES),SLUICE_SOURCES_FILE=$(abspath $(SOURCES))) $(PY) -m sluice_devtools.stack up

down:
	$(PY) -m sluice_devtools.stack down

# The warehouse (DATABASE_URL, else the embedded one) to a pg_dump -Fc file, and back into an empty database
# (README, Backup and restore): make backup [BACKUP=file.dump]; make restore BACKUP=file.dump
backup: runtime
	$(PY) -m sluice_devtools.backup backup $(or $(BACKUP),backups/sluice-$$(date -u +%Y%m%dT%H%M%SZ).dump)

restore: runtime
	$(PY) -m sluice_devtools.backup restore $(or $(BACKUP),$(error set BACKUP=path/to/file.dump))

clean: down
	-$(PY) -m sluice_devtools.embedded_pg stop .sluice/pg
	rm -rf .sluice
