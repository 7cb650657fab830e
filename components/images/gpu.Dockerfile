# syntax=docker/dockerfile:1
# The GPU image: autoencoder, stage1-3 and the Ray head/workers of their RayJobs. The CUDA build of
# the pinned torch brings the CUDA runtime as wheels (the node's driver comes from the NVIDIA
# container toolkit), with DeepSpeed and Ray from the project's pins. Build from the repository root:
#   docker build -f components/images/gpu.Dockerfile -t ghcr.io/unimedvl/unimedvl-gpu:$TAG .
# The base is pinned in components/images/lock.yaml (`make pin` writes the digest into this line).
FROM docker.io/library/python:3.11.14-slim-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0" \
 && pip install .

FROM docker.io/library/python:3.11.14-slim-bookworm
ARG VERSION=dev
LABEL org.opencontainers.image.title="unimedvl-gpu" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.source="https://github.com/unimedvl/unimedvl" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 unimedvl && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash unimedvl
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY params.yaml dvc.yaml ./
RUN chown -R 10001:10001 /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 UNIMEDVL_PARAMS=/app/params.yaml HOME=/home/unimedvl \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
# KubeRay starts `ray start` itself through the container command it sets; KFP sets its own too.
CMD ["unimedvl", "--help"]
