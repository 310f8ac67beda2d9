#!/usr/bin/env bash
# End-to-end check of the operator on a real cluster (kind), for machines that have Docker and kind.
# NOT run in CI or on the build machines (no container engine there); the CI end-to-end test runs the
# same operator against the API-server stand-in instead (tests/operator/test_operator_e2e.py).
#
#   scripts/e2e-kind.sh                          # create cluster "kascade-e2e", run the checks, delete it
#   KEEP=1 scripts/e2e-kind.sh                   # keep the cluster (and the operator log) afterwards
#   E2E_KUBECONFIG=~/.kube/k3d scripts/e2e-kind.sh   # use an existing cluster (k3d, ...) instead of kind
#
# Needs: kubectl on PATH (docker and kind unless E2E_KUBECONFIG is set); the project installed
# (pip install -e '.[operator]'). The cluster must not hold a namespace "llm" of its own.
# kind nodes have no GPUs: the GPU tiers' pods stay Pending, so the cascade never turns Ready here.
# What is checked is what a cluster without GPUs can show: children with GPU requests, node selectors
# and tolerations, owner references, the status the operator writes (observedGeneration, endpoint,
# conditions), Degraded for a missing Secret and for a GPU type no node offers with the children left
# untouched, no writes in steady state (resourceVersions unchanged), and garbage collection on delete.
set -euo pipefail

CLUSTER="${CLUSTER:-kascade-e2e}"
NS=llm
NAME=chat
REPO="$(cd "$(dirname "$0")/.." && pwd)"
EXAMPLE="$REPO/examples/chat-vllm-gpu.yaml"
WORK="$(mktemp -d)"
export KUBECONFIG="$WORK/kubeconfig"
export KASCADE_RECONCILE_INTERVAL_SECONDS="${KASCADE_RECONCILE_INTERVAL_SECONDS:-3}"
OPERATOR_PID=""

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; [ -f "$WORK/operator.log" ] && tail -50 "$WORK/operator.log" >&2; exit 1; }

cleanup() {
  if [ -z "${KEEP:-}" ] && [ -n "${E2E_KUBECONFIG:-}" ] && [ -n "$OPERATOR_PID" ]; then
    # While the operator still runs: it removes its finalizer, so the namespace can go.
    kubectl -n "$NS" delete modelcascades --all --timeout=60s >/dev/null 2>&1 || true
  fi
  if [ -n "$OPERATOR_PID" ]; then kill "$OPERATOR_PID" 2>/dev/null || true; wait "$OPERATOR_PID" 2>/dev/null || true; fi
  if [ -z "${KEEP:-}" ]; then
    if [ -n "${E2E_KUBECONFIG:-}" ]; then
      kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    else
      kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
  else
    echo "kept: cluster $CLUSTER, KUBECONFIG=$KUBECONFIG, operator log $WORK/operator.log"
  fi
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 1
  done
}

jsonpath() { kubectl -n "$NS" get "$1" "$2" -o "jsonpath=$3"; }
condition() { jsonpath modelcascade "$NAME" "{.status.conditions[?(@.type==\"$1\")].$2}"; }
condition_is() { [ "$(condition "$1" status)" = "$2" ] && { [ -z "${3:-}" ] || [ "$(condition "$1" reason)" = "$3" ]; }; }
children_versions() {
  kubectl -n "$NS" get serviceaccounts,roles,rolebindings,configmaps,services,deployments \
    -l "kascade.dev/cascade=$NAME" -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{"\n"}{end}' | sort
}

TOOLS="kubectl python"
[ -n "${E2E_KUBECONFIG:-}" ] || TOOLS="docker kind $TOOLS"
for tool in $TOOLS; do command -v "$tool" >/dev/null || fail "$tool is not on PATH"; done
python -c "import kascade.operator.handlers" 2>/dev/null || fail "install the project first: pip install -e '.[operator]'"

if [ -n "${E2E_KUBECONFIG:-}" ]; then
  log "existing cluster ($E2E_KUBECONFIG)"
  cp "$E2E_KUBECONFIG" "$KUBECONFIG"
else
  log "cluster $CLUSTER"
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
fi
NODE="$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')"
[ -n "$NODE" ] || fail "the cluster has no nodes"
# Label the node as GPU feature discovery labels an L4 machine; both tiers are pointed at that product below.
kubectl label node "$NODE" --overwrite nvidia.com/gpu.product=NVIDIA-L4

log "CRDs, namespace, Secrets"
kubectl apply -f "$REPO/crds/"
kubectl wait --for=condition=Established crd/modelcascades.kascade.dev --timeout=60s
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic hf-token --from-literal=token=hf_not_a_token --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic chat-client-keys --from-literal=keys=e2e-key --dry-run=client -o yaml | kubectl apply -f -

log "operator (out of cluster)"
python -m kascade operator --namespace "$NS" --standalone --liveness http://127.0.0.1:18080/healthz --verbose \
  > "$WORK/operator.log" 2>&1 &
OPERATOR_PID=$!
wait_for 60 "the operator's liveness endpoint" curl -fsS http://127.0.0.1:18080/healthz

log "apply the example with a large tier on the node's GPU product"
sed 's/gpuType: NVIDIA-H100-80GB-HBM3/gpuType: NVIDIA-L4/' "$EXAMPLE" | kubectl apply -f -
wait_for 60 "the children" kubectl -n "$NS" get deployment/chat-small deployment/chat-large deployment/chat-router \
  configmap/chat-router service/chat-router serviceaccount/chat-router role/chat-router rolebinding/chat-router
[ "$(jsonpath deployment chat-large '{.spec.template.spec.containers[0].resources.limits.nvidia\.com/gpu}')" = 4 ] \
  || fail "chat-large does not ask for 4 GPUs"
[ "$(jsonpath deployment chat-small '{.spec.template.spec.nodeSelector.nvidia\.com/gpu\.product}')" = NVIDIA-L4 ] \
  || fail "chat-small does not select L4 nodes"
jsonpath deployment chat-small '{.spec.template.spec.tolerations[*].key}' | grep -q nvidia.com/gpu \
  || fail "chat-small does not tolerate the GPU taint"
[ "$(jsonpath deployment chat-small '{.metadata.ownerReferences[0].kind}')" = ModelCascade ] || fail "no owner reference"

log "status"
GENERATION="$(jsonpath modelcascade "$NAME" '{.metadata.generation}')"
wait_for 60 "observedGeneration $GENERATION" \
  test "$(jsonpath modelcascade "$NAME" '{.status.observedGeneration}')" = "$GENERATION"
[ "$(jsonpath modelcascade "$NAME" '{.status.endpoint}')" = "http://chat-router.llm.svc:8000/v1" ] || fail "endpoint"
condition_is Degraded False || condition_is Degraded True ReplicasUnavailable || fail "unexpected Degraded: $(condition Degraded message)"
echo "Ready=$(condition Ready status) ($(condition Ready reason): $(condition Ready message))"
kubectl -n "$NS" get modelcascades

log "steady state writes nothing"
sleep $((2 * KASCADE_RECONCILE_INTERVAL_SECONDS))
BEFORE="$(children_versions)"
sleep $((3 * KASCADE_RECONCILE_INTERVAL_SECONDS))
[ "$(children_versions)" = "$BEFORE" ] || fail "children were rewritten in steady state"

log "a missing Secret: Degraded, children untouched"
kubectl -n "$NS" delete secret hf-token
wait_for 60 "Degraded MissingSecret" condition_is Degraded True MissingSecret
echo "Degraded: $(condition Degraded message)"
[ "$(children_versions)" = "$BEFORE" ] || fail "children changed while degraded"
kubectl -n "$NS" create secret generic hf-token --from-literal=token=hf_not_a_token --dry-run=client -o yaml | kubectl apply -f -
wait_for 60 "recovery" condition_is Degraded False

log "a GPU type no node offers: Degraded, children untouched"
BEFORE="$(children_versions)"
sed 's/gpuType: NVIDIA-H100-80GB-HBM3/gpuType: NVIDIA-B200/' "$EXAMPLE" | kubectl apply -f -
wait_for 60 "Degraded NoMatchingNodes" condition_is Degraded True NoMatchingNodes
echo "Degraded: $(condition Degraded message)"
[ "$(children_versions)" = "$BEFORE" ] || fail "children changed while degraded"
[ "$(jsonpath deployment chat-large '{.spec.template.spec.nodeSelector.nvidia\.com/gpu\.product}')" = NVIDIA-L4 ] \
  || fail "chat-large was changed"
kubectl -n "$NS" get events --field-selector involvedObject.name="$NAME"

log "delete: the children go (garbage collection)"
kubectl -n "$NS" delete modelcascade "$NAME" --timeout=60s
wait_for 120 "the children to go" \
  test -z "$(kubectl -n "$NS" get deployments,services,configmaps,serviceaccounts,roles,rolebindings -l kascade.dev/cascade=$NAME -o name)"

log "all checks passed"
