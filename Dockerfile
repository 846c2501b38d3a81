# The cutover command line with PostgreSQL 15's client programs (pg_dump,
# pg_restore, psql), for Kubernetes Jobs such as k8s/backfill-job.yaml.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
USER 10001
ENTRYPOINT ["cutover"]
