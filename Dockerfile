# Sluice's image: Airflow 3.3.2 with the project's pinned dependencies, used by every Airflow service and
# by the web app in docker-compose.yaml. Build: `docker compose build` (or `docker build -t sluice-airflow .`).
FROM apache/airflow:3.3.2-python3.11

# As the airflow user, as the official image expects for `pip install` (never as root).
USER airflow

# The same pinned set as `make install`: requirements.txt resolved with -c constraints.txt.
# (requirements.txt also lists gunicorn, which serves webapp.wsgi:app.)
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/sluice-deps/
RUN pip install --no-cache-dir \
        -r /opt/airflow/sluice-deps/requirements.txt \
        -c /opt/airflow/sluice-deps/constraints.txt

# The code, so the image runs on its own; docker-compose.yaml mounts the working tree over these.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 sql/ /opt/airflow/sql/
COPY --chown=airflow:0 webapp/ /opt/airflow/webapp/
COPY --chown=airflow:0 gunicorn.conf.py /opt/airflow/gunicorn.conf.py

# `sluice` is a package under plugins/; `webapp` sits at the root (/opt/airflow).
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow
