#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run on (tests/cluster/), from the Go module proxy:
# kube-apiserver, kube-controller-manager and kube-scheduler from k8s.io/kubernetes (scripts/control-plane/
# go.mod pins it and every staging module), etcd from go.etcd.io/etcd/server/v3, and kwok (nodes and pods
# without a kubelet) from sigs.k8s.io/kwok. The binaries are cached under ~/.cache/kascade/control-plane/,
# keyed by the versions, so a machine builds once: a second run prints the folder and exits.
#
#   scripts/build-control-plane.sh          # build if needed; the last line of stdout is the bin folder
#
# Needs Go >= 1.26 (the Go command fetches modules through the configured proxy). First build on 2 cores:
# see docs/install.md#the-real-control-plane-in-the-tests.
set -euo pipefail

KUBERNETES_VERSION=v1.37.2   # must match scripts/control-plane/go.mod
ETCD_VERSION=v3.7.3          # must match scripts/control-plane/etcd/go.mod
KWOK_VERSION=v0.8.0

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kascade"
BIN="$CACHE/control-plane/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

complete() { for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done; [ -f "$BIN/kwok-stages/pod-ready.yaml" ]; }
if complete; then echo "$BIN"; exit 0; fi

# Module downloads and compiled packages are cached beside the binaries' folder unless the caller set them.
export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
PARTIAL="$BIN.partial"
rm -rf "$PARTIAL" && mkdir -p "$PARTIAL"
started=$SECONDS

# The API server reports its version from these (helm checks a chart's kubeVersion against it).
minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
version_flags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
version_flags+=" -X k8s.io/component-base/version.gitTreeState=clean"
version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
version_flags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

echo "building the control plane into $BIN (Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)" >&2
(cd "$HERE/control-plane" && go build -ldflags "-s -w $version_flags" -o "$PARTIAL/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler)
# etcd's server module replaces its siblings with ../ paths: scripts/control-plane/etcd/go.mod pins them.
(cd "$HERE/control-plane/etcd" && go build -ldflags "-s -w" -o "$PARTIAL/etcd" go.etcd.io/etcd/server/v3)
# kwok's module has no replace directives, so `go install MODULE@VERSION` builds it as released.
GOBIN="$PARTIAL" GOFLAGS= go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# kwok does nothing without stages (how fake nodes and pods move through their phases): keep the release's
# own stage files beside it; the test fixture picks which to load.
kwok_source="$(GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$PARTIAL/kwok-stages"
cp "$kwok_source"/kustomize/stage/node/fast/node-initialize.yaml \
   "$kwok_source"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
   "$kwok_source"/kustomize/stage/pod/fast/pod-*.yaml "$PARTIAL/kwok-stages/"

rm -rf "$BIN" && mv "$PARTIAL" "$BIN"
complete
echo "built in $((SECONDS - started)) s" >&2
echo "$BIN"
