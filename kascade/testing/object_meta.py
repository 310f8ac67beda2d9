"""ObjectMeta rules the real server checks for every kind: names, labels, annotations, owner references, finalizers."""

from __future__ import annotations

import re
from typing import Any

from kascade.testing.errors import Cause, bad_request, forbidden_value, invalid_value, required_value
from kascade.testing.kinds import Kind

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_ANNOTATIONS_MAX_BYTES = 256 * 1024

_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
    "'[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _name_causes(kind: Kind, name: str) -> list[Cause]:
    if kind.plural in ("roles", "rolebindings", "clusterroles", "clusterrolebindings"):
        if name in (".", "..") or "/" in name or "%" in name:
            return [invalid_value("metadata.name", name, "may not contain '/' or '%'")]
        return []
    if kind.plural == "namespaces":
        pattern, message, limit = DNS1123_LABEL, LABEL_MESSAGE, 63
    elif kind.plural == "services":
        pattern, message, limit = DNS1035_LABEL, _DNS1035_MESSAGE, 63
    else:
        pattern, message, limit = DNS1123_SUBDOMAIN, _SUBDOMAIN_MESSAGE, 253
    causes = []
    if len(name) > limit:
        causes.append(invalid_value("metadata.name", name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        causes.append(invalid_value("metadata.name", name, message))
    return causes


def qualified_name_causes(field: str, key: str) -> list[Cause]:
    """A label/annotation key or finalizer: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    causes = []
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        causes.append(invalid_value(field, key, "prefix part " + _SUBDOMAIN_MESSAGE))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        causes.append(
            invalid_value(
                field,
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character, "
                "and must be no more than 63 characters",
            )
        )
    return causes


def validate_metadata(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(required_value("metadata.name", "name or generateName is required"))
    else:
        causes += _name_causes(kind, name)
    for key, value in (meta.get("labels") or {}).items():
        causes += qualified_name_causes("metadata.labels", key)
        if not isinstance(value, str):
            raise bad_request(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                f"json: cannot unmarshal {type(value).__name__} into Go struct field ObjectMeta.metadata.labels of type string"
            )
        if len(value) > 63:
            causes.append(invalid_value("metadata.labels", value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.match(value):
            causes.append(
                invalid_value(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of "
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        causes += qualified_name_causes("metadata.annotations", key.lower())
        if not isinstance(value, str):
            raise bad_request(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                f"json: cannot unmarshal {type(value).__name__} into Go struct field ObjectMeta.metadata.annotations of type string"
            )
    if (
        sum(len(key) + len(value) for key, value in annotations.items() if isinstance(value, str))
        > _ANNOTATIONS_MAX_BYTES
    ):
        causes.append(
            Cause(
                "FieldValueTooLong",
                f"Too long: must have at most {_ANNOTATIONS_MAX_BYTES} bytes",
                "metadata.annotations",
            )
        )
    controllers = []
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        where = f"metadata.ownerReferences[{index}]"
        for required in ("apiVersion", "kind", "name"):
            if not ref.get(required):
                causes.append(
                    invalid_value(
                        f"{where}.{required}" if required != "apiVersion" else f"{where}.apiVersion",
                        ref.get(required, ""),
                        f"{required} must not be empty",
                    )
                )
        if not ref.get("uid"):
            causes.append(invalid_value(f"{where}.uid", ref.get("uid", ""), "uid must not be empty"))
        if ref.get("controller"):
            controllers.append(ref)
    if len(controllers) > 1:
        names = ", ".join(f"{ref.get('kind')}/{ref.get('name')}" for ref in controllers)
        causes.append(
            invalid_value(
                "metadata.ownerReferences",
                meta.get("ownerReferences"),
                f'Only one reference can have Controller set to true. Found "true" in references for {names}',
            )
        )
    finalizers = meta.get("finalizers") or []
    for index, finalizer in enumerate(finalizers):
        where = f"metadata.finalizers[{index}]"
        causes += qualified_name_causes(where, finalizer)
        if "/" not in finalizer and finalizer not in STANDARD_FINALIZERS:
            causes.append(
                invalid_value(where, finalizer, "name is neither a standard finalizer name nor is it fully qualified")
            )
    if old is not None and (old.get("metadata") or {}).get("deletionTimestamp"):
        added = set(finalizers) - set((old.get("metadata") or {}).get("finalizers") or [])
        if added:
            causes.append(
                forbidden_value(
                    "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)!r}",
                )
            )
    return causes
