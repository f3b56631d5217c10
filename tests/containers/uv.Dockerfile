# Stands in for ghcr.io/astral-sh/uv where no registry is reachable: uv from PyPI, alone in
# an image, at the paths of the official one (/uv, /uvx).
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS build
ARG UV_VERSION
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"

FROM scratch
COPY --from=build /opt/uv/bin/uv /opt/uv/bin/uvx /
