"""The security contexts of every pod Kascade creates (tiers, router, distillation Jobs). Pure.

Every pod meets the Pod Security Standard "restricted", which more and more
clusters enforce on their namespaces: a pod that misses one rule is refused by
the API server, and a Deployment then shows only missing replicas. One place
sets them, so that no builder can forget one:

- pod level: `runAsNonRoot`, seccomp `RuntimeDefault`, and (unless the
  platform assigns users, `OperatorSettings.run_as_user` None) one explicit
  UID, GID and fsGroup for all of a cascade's pods;
- every container, init containers included: no privilege escalation, every
  capability dropped.

One UID for all pods matters beyond admission: a distillation Job writes the
student that a tier then serves, and the routers write the log that the Jobs
read, all on the same claims. `fsGroup` makes a freshly provisioned claim (root
owned, mode 0755) writable by that group; `OnRootMismatch` skips the recursive
ownership walk when the claim's root already fits, which on a claim of model
weights would otherwise delay every pod start by minutes.
"""

from __future__ import annotations

from typing import Any

from kascade.operator.settings import OperatorSettings

SECCOMP_RUNTIME_DEFAULT = {"type": "RuntimeDefault"}


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    """The pod-level securityContext of every pod Kascade builds."""
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": dict(SECCOMP_RUNTIME_DEFAULT)}
    uid = settings.run_as_user
    if uid is not None:
        # Explicit, not left to the image: the vLLM image runs as root, and the
        # kubelet refuses runAsNonRoot for an image whose USER is root or a name.
        context.update(runAsUser=uid, runAsGroup=uid, fsGroup=uid, fsGroupChangePolicy="OnRootMismatch")
    return context


def container_security_context() -> dict[str, Any]:
    """The securityContext of every container: no privilege escalation, no capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted(pod: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """`pod` (a pod spec) with the restricted security contexts on the pod and on each of its containers."""
    secured = {**pod, "securityContext": pod_security_context(settings)}
    for field in ("initContainers", "containers"):
        if field in pod:
            secured[field] = [
                {**container, "securityContext": container_security_context()} for container in pod[field]
            ]
    return secured
