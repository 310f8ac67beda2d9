#!/usr/bin/env bash
# Checks Kascade's contract with vLLM against the real vllm package, without a GPU: the request bodies the
# router sends a vllm tier validate against vLLM's own request models, the `vllm serve` arguments the
# operator renders for every example parse with vLLM's own parser, and the fixed test upstream's responses
# validate against vLLM's response models (scripts/vllm_contract.py says which check is which).
#
#   scripts/vllm-contract.sh                 # builds the environment once, then checks; exits 1 on a failure
#
# vllm gets a virtualenv of its own under ~/.cache/kascade/, keyed by its version and reused while it imports
# (KASCADE_VLLM_VERSION picks another release): it pins its own CUDA torch, which cannot share an environment
# with the project's pinned CPU torch (it runs on the CPU here; nothing is served). The project goes in with
# its core dependencies and the `log` extra only (no torch pin); being editable, it is re-pointed at this
# checkout when the cached environment was built from another one or another package list (CI clones afresh).
set -euo pipefail

VLLM_VERSION="${KASCADE_VLLM_VERSION:-0.33.0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/kascade/vllm-venv-$VLLM_VERSION"
PYTHON="${PYTHON:-python3}"
py="$VENV/bin/python"
# Not from the checkout: Python puts the working folder first on its path, and our operator/ would shadow
# the standard library's `operator` there.
mkdir -p "$(dirname "$VENV")" && cd "$(dirname "$VENV")"

# What goes into the environment; written into it last, so an interrupted or older build is completed by pip
# (which installs only what is missing) rather than reused half-installed. The project's `log` extra: the
# router keeps its escalation log with it, and the check runs the router as a cluster runs it.
RECIPE="vllm==$VLLM_VERSION kascade[log] (editable, no other extras)"
if [ -f "$VENV/.recipe" ] && ! "$py" -c "import vllm" 2>/dev/null; then
  rm -rf "$VENV"  # built once and broken since (a Python upgraded under it): start again
fi
if [ "$(cat "$VENV/.recipe" 2>/dev/null)" != "$RECIPE" ]; then
  echo "building the vllm $VLLM_VERSION environment in $VENV (once)" >&2
  started=$SECONDS
  [ -x "$py" ] || "$PYTHON" -m venv "$VENV"
  "$py" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
  "$py" -m pip install --quiet "vllm==$VLLM_VERSION"
  # The project's core dependencies and the log extra resolve beside vllm's; its torch pin is in `local`.
  "$py" -m pip install --quiet --no-build-isolation -e "$REPO[log]"
  echo "$RECIPE" >"$VENV/.recipe"
  echo "built in $((SECONDS - started)) s" >&2
fi

# The editable install maps each package to a folder of the checkout it was made from, as pyproject.toml
# listed them then: re-point it when the checkout or its package list is not this one (a cached environment
# built before a package was added cannot import it).
install_key="$(cd "$REPO" && pwd -P) $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.kascade-install" 2>/dev/null)" != "$install_key" ]; then
  "$py" -m pip install --quiet --no-build-isolation --no-deps -e "$REPO"
  echo "$install_key" >"$VENV/.kascade-install"
fi

exec "$py" "$REPO/scripts/vllm_contract.py" "$@"
