# Stands in for the official postgres image where no registry is reachable: Debian's
# PostgreSQL, set up from the same variables (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)
# in the same data folder, and stopped by the same signal.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/
ENV PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
