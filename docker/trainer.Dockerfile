# syntax=docker/dockerfile:1.7
# The trainer pod (GPU): ultralytics on torch's CUDA build. PyPI's Linux x86_64 torch wheels carry the
# CUDA runtime, cuDNN and cuBLAS (nvidia-* wheels), so a slim Python base is enough; the node's NVIDIA
# driver and the device plugin provide the GPU. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/visioninapp/trainer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY visioninapp/ visioninapp/
COPY operator/ operator/
COPY trainer/ trainer/
COPY edge/ edge/
COPY api/ api/
# torch and torchvision pinned together (constraints.txt); never an unpinned torch
RUN /opt/venv/bin/pip install -c constraints.txt torch torchvision \
 && /opt/venv/bin/pip install -c constraints.txt ".[trainer]"

FROM ${PYTHON_IMAGE}
# OpenCV (ultralytics' opencv-python) needs libGL and glib at import time
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 10001 visioninapp && useradd -u 10001 -g 10001 -M -s /usr/sbin/nologin visioninapp
COPY --from=build /opt/venv /opt/venv
# ultralytics writes its settings under $HOME and YOLO_CONFIG_DIR: point them at the scratch volume
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/scratch YOLO_CONFIG_DIR=/scratch/ultralytics \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
ENTRYPOINT ["visioninapp-trainer"]
