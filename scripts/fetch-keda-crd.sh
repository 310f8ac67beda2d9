#!/usr/bin/env bash
# Fetches KEDA's ScaledObject CRD (keda.sh/v1alpha1) from its Go module, github.com/kedacore/keda/v2, through
# the Go module proxy, and caches it under ~/.cache/kascade/keda/<version>/: the tests validate the ScaledObjects
# the operator renders against it (offline, and on the real control plane of tests/cluster).
#
#   scripts/fetch-keda-crd.sh          # the last line of stdout is the CRD file
#
# Needs Go (the same as scripts/build-control-plane.sh). KEDA v2.21 needs Go >= 1.27; v2.20 builds with 1.26.
set -euo pipefail

KEDA_VERSION=v2.20.2
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kascade"
CRD="$CACHE/keda/$KEDA_VERSION/keda.sh_scaledobjects.yaml"
if [ -s "$CRD" ]; then echo "$CRD"; exit 0; fi

export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
source_dir="$(GOFLAGS= go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$source_dir" ] || { echo "go mod download github.com/kedacore/keda/v2@$KEDA_VERSION gave no folder" >&2; exit 1; }
mkdir -p "$(dirname "$CRD")"
cp "$source_dir/config/crd/bases/keda.sh_scaledobjects.yaml" "$CRD.partial"
mv "$CRD.partial" "$CRD"
echo "$CRD"
