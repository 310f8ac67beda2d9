"""The body of a PUT that replaces a child: the desired manifest, plus what is not the operator's to drop. Pure."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# Annotation and label prefixes the operator owns on its children; keys under
# other prefixes belong to someone else (a controller, a user) and survive a replace.
OWNED_PREFIXES = ("kascade.dev/", "app.kubernetes.io/")


def replacement(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a PUT that turns `observed` into `desired`.

    The desired manifest whole (so removed fields go away), plus what is not
    ours to drop: the observed resourceVersion (optimistic concurrency),
    finalizers, other owners' references, and labels and annotations under
    other prefixes than kascade.dev/ and app.kubernetes.io/ (e.g. the
    Deployment controller's `deployment.kubernetes.io/revision`), and the
    live `spec.replicas` of a Deployment built without it (an autoscaled tier:
    an autoscaler owns the figure; a PUT without it would reset it to 1).
    """
    body = copy.deepcopy(dict(desired))
    meta = body.setdefault("metadata", {})
    seen = observed.get("metadata") or {}
    meta["resourceVersion"] = seen.get("resourceVersion")
    for key in ("labels", "annotations"):
        foreign = {k: v for k, v in (seen.get(key) or {}).items() if not k.startswith(OWNED_PREFIXES)}
        merged = {**foreign, **(meta.get(key) or {})}
        if merged:
            meta[key] = merged
    if seen.get("finalizers"):
        meta["finalizers"] = list(seen["finalizers"])
    _keep_scaled_replicas(body, observed)
    ours = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
    others = [ref for ref in seen.get("ownerReferences") or [] if ref.get("uid") not in ours]
    if others:
        meta["ownerReferences"] = [*others, *(meta.get("ownerReferences") or [])]
    return body


def _keep_scaled_replicas(body: dict[str, Any], observed: Mapping[str, Any]) -> None:
    spec = body.get("spec")
    live = (observed.get("spec") or {}).get("replicas")
    if body.get("kind") == "Deployment" and isinstance(spec, dict) and "replicas" not in spec and live is not None:
        spec["replicas"] = live
