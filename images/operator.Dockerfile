# syntax=docker/dockerfile:1
# The operator image: `kascade operator` (Kopf) and nothing it does not need:
# the `operator` extra of pyproject.toml, no torch, no transformers.
#
# Build from the repository root (the chart's default operator image):
#   docker build -f images/operator.Dockerfile -t ghcr.io/kascade-dev/kascade-operator:0.1.0 .

# Pinned: a floating tag would change the interpreter under a released image.
# Pin a digest too where your registry policy asks for one:
#   --build-arg PYTHON_IMAGE=python:3.12.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

# --- build: a virtual environment holding kascade[operator] -----------------------
FROM ${PYTHON_IMAGE} AS build
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
RUN python -m venv /opt/kascade \
 && /opt/kascade/bin/pip install ".[operator]" \
 && /opt/kascade/bin/python -c "import importlib.util as u, sys; sys.exit('torch got into the operator image' if u.find_spec('torch') else 0)" \
 && /opt/kascade/bin/kascade --help >/dev/null

# --- final: the interpreter, the environment, a non-root user ----------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kascade-operator" \
      org.opencontainers.image.description="Kascade's Kopf operator: deploys ModelCascade tiers and routers." \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the chart's runAsUser; no home, no login shell.
RUN groupadd --gid 65532 kascade \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kascade
COPY --from=build /opt/kascade /opt/kascade
ENV PATH=/opt/kascade/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# Kopf's liveness endpoint (--liveness).
EXPOSE 8080
ENTRYPOINT ["kascade", "operator"]
# Cluster-wide, as the chart's default; the chart passes its own arguments.
CMD ["--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
