# Sluice's image: Airflow 3.3.2 with the project's pinned dependencies and Sluice installed, used by every
# Airflow service and by the web app in docker-compose.yaml.
# Build: `docker compose build` (or `docker build -t sluice-airflow .`).
FROM apache/airflow:3.3.2-python3.11

# As the airflow user, as the official image expects for `pip install` (never as root).
USER airflow

# The same pinned set as `make install`: requirements.txt (and the build backend) resolved with -c constraints.txt.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/sluice-deps/
RUN pip install --no-cache-dir \
        -r /opt/airflow/sluice-deps/requirements.txt setuptools \
        -c /opt/airflow/sluice-deps/constraints.txt

# The code, so the image runs on its own; docker-compose.yaml mounts the working tree over these.
COPY --chown=airflow:0 pyproject.toml requirements.txt requirements-dev.txt /opt/airflow/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 sql/ /opt/airflow/sql/
COPY --chown=airflow:0 webapp/ /opt/airflow/webapp/
COPY --chown=airflow:0 gunicorn.conf.py /opt/airflow/gunicorn.conf.py

# Where the observe profile's prometheus-key service writes Prometheus's API key: a fresh named volume mounted
# here starts with this folder's owner and mode, so the service writes it as the airflow uid (any uid of group 0).
RUN mkdir -p /opt/airflow/credentials && chmod 0775 /opt/airflow/credentials

# Sluice installed editable from /opt/airflow, as `make install` does: Airflow's tasks and the web app import
# `sluice` and `webapp` from these folders (or the mounts over them), with no PYTHONPATH.
RUN pip install --no-cache-dir --no-build-isolation -e /opt/airflow -c /opt/airflow/sluice-deps/constraints.txt
