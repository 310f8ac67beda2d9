"""API discovery and the OpenAPI v3 index, enough for the real kubectl.

kubectl maps names (`modelcascades`, `mc`, `deploy`) to resources through the
legacy discovery documents (`/api`, `/api/v1`, `/apis`, `/apis/{group}/{version}`;
the stand-in answers the aggregated-discovery Accept types with the legacy
format, which kubectl accepts). `kubectl apply` with `--validate=strict` (its
default) asks OpenAPI v3 whether the server supports the `fieldValidation`
query parameter for the kind's PATCH operation; the stand-in says yes, so
kubectl leaves validation to the server, as it does with a real one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kascade.testing import errors
from kascade.testing.kinds import KindRegistry

SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.1-kascade-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def fixed_document(kinds: KindRegistry, path: str) -> dict[str, Any] | None:
    """The document at a discovery path outside `/api/{version}` and `/apis/{group}`; None for other paths."""
    if path == "/":
        return root_paths(kinds)
    if path == "/version":
        return SERVER_VERSION
    if path == "/api":
        return api_versions()
    if path == "/apis":
        return api_group_list(kinds)
    if path == "/openapi/v3":
        return openapi_v3_root(kinds)
    if path.startswith("/openapi/v3/"):
        document = openapi_v3_group_version(kinds, path[len("/openapi/v3/") :])
        if document is None:
            raise errors.resource_not_found()
        return document
    return None


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [{"groupVersion": f"{name}/{version}", "version": version} for version in versions],
        "preferredVersion": {"groupVersion": f"{name}/{versions[0]}", "version": versions[0]},
    }


def api_group_list(kinds: KindRegistry) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in kinds.groups()],
    }


def api_group(kinds: KindRegistry, group: str) -> dict[str, Any] | None:
    versions = kinds.versions_of(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def api_resource_list(kinds: KindRegistry, group: str, version: str) -> dict[str, Any] | None:
    served = kinds.in_group_version(group, version)
    if not served:
        return None
    resources = [entry for kind in sorted(served, key=lambda k: k.plural) for entry in kind.discovery()]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def root_paths(kinds: KindRegistry) -> dict[str, Any]:
    paths = {"/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version", "/openapi/v3"}
    for name, versions in kinds.groups():
        paths.add(f"/apis/{name}")
        paths.update(f"/apis/{name}/{version}" for version in versions)
    return {"paths": sorted(paths)}


# --- OpenAPI v3 ------------------------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gv_document(kinds: KindRegistry, group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind in kinds.in_group_version(group, version):
        gvk = {"group": group, "version": version, "kind": kind.kind}
        prefix = f"/{_gv_path(group, version)}" + ("/namespaces/{namespace}" if kind.namespaced else "")
        parameters = [
            {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
            for name in ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")
        ]
        operation = {
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "patch",
            "parameters": parameters,
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{prefix}/{kind.plural}/{{name}}"] = {"patch": operation}
        if kind.status_subresource:
            paths[f"{prefix}/{kind.plural}/{{name}}/status"] = {"patch": operation}
        if kind.custom and kind.schema is not None:
            schemas[f"{'.'.join(reversed(group.split('.')))}.{version}.{kind.kind}"] = {
                **kind.schema,
                "x-kubernetes-group-version-kind": [gvk],
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_v3_root(kinds: KindRegistry) -> dict[str, Any]:
    entries = {}
    versions = [("", "v1")] + [(name, version) for name, group_versions in kinds.groups() for version in group_versions]
    for group, version in versions:
        digest = (
            hashlib.sha256(json.dumps(_gv_document(kinds, group, version), sort_keys=True).encode())
            .hexdigest()[:32]
            .upper()
        )
        entries[_gv_path(group, version)] = {
            "serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"
        }
    return {"paths": entries}


def openapi_v3_group_version(kinds: KindRegistry, path: str) -> dict[str, Any] | None:
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[:1] == ["apis"] and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    if not kinds.in_group_version(group, version):
        return None
    return _gv_document(kinds, group, version)
