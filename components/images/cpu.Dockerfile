# syntax=docker/dockerfile:1
# The CPU image: ingest, qc, heldout, benchmark, judge, evaluate, register, promote, serve, and the
# KFP task of each training stage that launches a RayJob. Build from the repository root:
#   docker build -f components/images/cpu.Dockerfile -t ghcr.io/unimedvl/unimedvl-cpu:$TAG .
# The base is pinned in components/images/lock.yaml (`make pin` writes the digest into this line).
FROM docker.io/library/python:3.11.14-slim-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The CPU build of the pinned torch first, so the project's `torch==` pin is already satisfied.
# DL3013: "." is this project, whose pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0" \
 && pip install ".[corpus]" \
 && pip download --no-deps "torchxrayvision==1.5.7" -d /opt/wheels

FROM docker.io/library/python:3.11.14-slim-bookworm
ARG VERSION=dev
LABEL org.opencontainers.image.title="unimedvl-cpu" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.source="https://github.com/unimedvl/unimedvl" \
      org.opencontainers.image.licenses="Apache-2.0"
# git: promote pushes the staging overlay's change to the GitOps repository (pipeline.gitops).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.5-0+deb12u3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 unimedvl && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin unimedvl
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/wheels /app/build/wheels
WORKDIR /app
COPY params.yaml dvc.yaml ./
# promote.overlay (infra/overlays/staging) and the bases it builds on: what promote rewrites without a GitOps repository.
COPY infra ./infra
RUN chown -R 10001:10001 /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 UNIMEDVL_PARAMS=/app/params.yaml HOME=/home/unimedvl
USER 10001
ENTRYPOINT ["unimedvl"]
CMD ["--help"]
