# syntax=docker/dockerfile:1.7
# The edge runtime on NVIDIA Jetson (JetPack 6, L4T r36, arm64): onnxruntime-gpu with the TensorRT
# and CUDA execution providers from the JetPack libraries. L4T's Ubuntu 22.04 ships Python 3.10 and
# the project needs 3.11, so uv installs a standalone CPython 3.11. Cameras: OpenCV is PyPI's
# opencv-python-headless (FFmpeg for RTSP and files, V4L2 for USB cameras; no GStreamer): JetPack's
# own OpenCV has GStreamer but is built for the system's Python 3.10, so CSI cameras
# (`nvarguscamerasrc`) go through PyGObject's appsink, built here against L4T's GLib (2.72: PyGObject
# before 3.51) and using JetPack's GStreamer with NVIDIA's plugins. Build on an arm64 host or with
# buildx + QEMU:
#   docker buildx build -f docker/edge-l4t.Dockerfile --platform linux/arm64 \
#     -t ghcr.io/visioninapp/edge:0.1.0-l4t-r36 .
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11
# onnxruntime-gpu for JetPack 6 / CUDA 12.6 (Jetson AI Lab's index); pin the version you validated
ARG ORT_INDEX=https://pypi.jetson-ai-lab.dev/jp6/cu126
ARG ORT_VERSION=1.20.0

FROM ${UV_IMAGE} AS uv

FROM ${L4T_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
    libgirepository1.0-dev libcairo2-dev pkg-config gcc \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY visioninapp/ visioninapp/
COPY operator/ operator/
COPY trainer/ trainer/
COPY edge/ edge/
COPY api/ api/
ARG ORT_INDEX
ARG ORT_VERSION
RUN VIRTUAL_ENV=/opt/venv uv pip install ".[edge]" \
 && VIRTUAL_ENV=/opt/venv uv pip uninstall onnxruntime \
 && VIRTUAL_ENV=/opt/venv uv pip install --index-url "${ORT_INDEX}" "onnxruntime-gpu==${ORT_VERSION}" \
 && VIRTUAL_ENV=/opt/venv uv pip install "PyGObject>=3.42,<3.51"

FROM ${L4T_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends \
    gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd -g 10001 visioninapp && useradd -u 10001 -g 10001 -M -s /usr/sbin/nologin visioninapp
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 VISIONINAPP_DATA_DIR=/var/lib/visioninapp \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["visioninapp-edge"]
