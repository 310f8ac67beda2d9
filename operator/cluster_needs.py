"""What a cascade needs from the cluster besides its children: the Secrets it names, GPU types. Pure.

The handler reads exactly these (Secrets by name, nodes only when a tier asks
for a GPU type); `problems.check_semantics` reports what is missing.
"""

from __future__ import annotations

from kascade.api.modelcascade import ModelCascade, SecretKeyRef
from kascade.operator.build_tier import deploys_pods
from kascade.runtime.config import judge_api_key_secret


def secret_refs(cascade: ModelCascade) -> list[tuple[str, SecretKeyRef]]:
    """Every Secret reference of the cascade, with where it is written (for messages), in spec order."""
    refs = []
    for tier in cascade.spec.tiers:
        if tier.model.hub_token_secret is not None:
            refs.append((f'tier "{tier.name}" (model.hubTokenSecret)', tier.model.hub_token_secret))
        if tier.api_key_secret is not None:
            refs.append((f'tier "{tier.name}" (apiKeySecret)', tier.api_key_secret))
    if cascade.spec.router.api_key_secret is not None:
        refs.append(("the router (router.apiKeySecret)", cascade.spec.router.api_key_secret))
    judge_key = judge_api_key_secret(cascade)
    if judge_key is not None:
        refs.append(("the judge (calibration.judge.apiKeySecret)", judge_key))
    return refs


def referenced_secrets(cascade: ModelCascade) -> dict[str, set[str]]:
    """Secret name -> the keys the cascade reads from it."""
    wanted: dict[str, set[str]] = {}
    for _, ref in secret_refs(cascade):
        wanted.setdefault(ref.name, set()).add(ref.key)
    return wanted


def wants_gpu_products(cascade: ModelCascade) -> bool:
    """Whether any tier asks for a GPU type (only then are nodes listed)."""
    return any(deploys_pods(t) and t.resources.gpus > 0 and t.resources.gpu_type for t in cascade.spec.tiers)
