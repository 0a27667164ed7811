# syntax=docker/dockerfile:1.7
# The edge runtime on x86 (CPU onnxruntime; a GPU box can swap in onnxruntime-gpu): no torch.
# Jetsons use docker/edge-l4t.Dockerfile; both are pushed under one multi-arch tag:
#   docker buildx build -f docker/edge.Dockerfile --platform linux/amd64 -t ghcr.io/visioninapp/edge:0.1.0-amd64 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

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
RUN /opt/venv/bin/pip install ".[edge]"

FROM ${PYTHON_IMAGE}
RUN groupadd -g 10001 visioninapp && useradd -u 10001 -g 10001 -M -s /usr/sbin/nologin visioninapp
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 VISIONINAPP_DATA_DIR=/var/lib/visioninapp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["visioninapp-edge"]
