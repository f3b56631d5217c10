# Stands in for the official redis image where no registry is reachable: Debian's Redis,
# started by the command compose.yaml gives (redis-server ...), with its data in /data.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /data
CMD ["redis-server"]
