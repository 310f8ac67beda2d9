"""In-place edits of children that the spec hash cannot see. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kascade.operator.labels import SPEC_HASH_ANNOTATION
from kascade.operator.plan import ChildKey, child_key

# Fields the API server does not default: compared as they are, so that an in-place edit (a widened
# Role, a hand-edited router config) counts as drift even though the spec-hash annotation still matches.
EXACT_FIELDS: dict[str, tuple[str, ...]] = {
    "ConfigMap": ("data", "binaryData"),
    "Role": ("rules",),
    "RoleBinding": ("roleRef", "subjects"),
}


def mark_edited(
    desired: Iterable[Mapping[str, Any]], observed: Mapping[ChildKey, Mapping[str, Any]]
) -> dict[ChildKey, dict[str, Any]]:
    """`observed`, with the spec hash taken off children whose exact fields differ from the desired ones.

    The plan compares spec hashes only (the API server adds defaults to most
    kinds, so whole objects never compare equal); for the kinds in
    `EXACT_FIELDS` a difference is an edit, and the plan then replaces them.
    """
    result = {key: dict(obj) for key, obj in observed.items()}
    for manifest in desired:
        key = child_key(manifest)
        fields = EXACT_FIELDS.get(key[0])
        current = result.get(key)
        if not fields or current is None:
            continue
        if any((manifest.get(name) or None) != (current.get(name) or None) for name in fields):
            metadata = dict(current.get("metadata") or {})
            metadata["annotations"] = {
                k: v for k, v in (metadata.get("annotations") or {}).items() if k != SPEC_HASH_ANNOTATION
            }
            current["metadata"] = metadata
    return result
