# syntax=docker/dockerfile:1.7
# The API with the web console. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t ghcr.io/visioninapp/api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG NODE_IMAGE=node:20.18.1-bookworm-slim

# The console's browser libraries come from npm (pinned by the lock file), never from a CDN.
FROM ${NODE_IMAGE} AS console
WORKDIR /frontend
# vendor.mjs bundles the console's own modules too (esbuild, an optional dependency by npm's
# rules but needed here), so it runs after the sources are in place.
COPY frontend/ ./
RUN npm ci --no-audit --no-fund && node vendor.mjs \
 && rm -rf node_modules package.json package-lock.json vendor.mjs

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY visioninapp/ visioninapp/
COPY operator/ operator/
COPY trainer/ trainer/
COPY edge/ edge/
COPY api/ api/
RUN /opt/venv/bin/pip install ".[api]"

FROM ${PYTHON_IMAGE}
RUN groupadd -g 10001 visioninapp && useradd -u 10001 -g 10001 -M -s /usr/sbin/nologin visioninapp
COPY --from=build /opt/venv /opt/venv
COPY --from=console /frontend /opt/visioninapp/console
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    VISIONINAPP_DATA_DIR=/var/lib/visioninapp VISIONINAPP_CONSOLE_DIR=/opt/visioninapp/console
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["visioninapp-api"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
