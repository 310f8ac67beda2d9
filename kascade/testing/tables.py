"""Server-side printing: the `Table` (meta.k8s.io/v1) that `kubectl get` asks for.

Custom resources get the CRD's `additionalPrinterColumns` (JSONPath cells,
dates shown as ages, as the real table convertor does); built-in kinds get the
columns kubectl users know (Deployments: READY, UP-TO-DATE, AVAILABLE...);
anything else gets NAME and AGE.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from kascade.testing.kinds import Kind

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically.",
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "string",
    "format": "",
    "priority": 0,
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
}


# --- JSONPath (the subset CRD printer columns use) ---------------------------------------


_TOKEN = re.compile(
    r"""\.([A-Za-z0-9_\-$]+)|\[(\d+|\*)\]|\[\?\(@((?:\.[A-Za-z0-9_\-]+)+)\s*(==|!=)\s*(?:"([^"]*)"|'([^']*)'|([^)\s]+))\)\]|\.\*"""
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """All values `path` selects: `.a.b`, `[0]`, `[*]`, `.*`, `[?(@.type=="Ready")]`."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    path = path.lstrip("$")
    values = [obj]
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if not match:
            return []
        position = match.end()
        key, index, filter_path, operator, dq, sq, bare = match.groups()
        selected: list[Any] = []
        for value in values:
            if key is not None:
                if isinstance(value, dict) and key in value:
                    selected.append(value[key])
            elif index is not None:
                if isinstance(value, list):
                    selected.extend(value if index == "*" else value[int(index) : int(index) + 1])
            elif filter_path is not None:
                wanted = dq if dq is not None else sq if sq is not None else bare
                for item in value if isinstance(value, list) else []:
                    found = jsonpath(item, filter_path)
                    equal = bool(found) and str(found[0]) == wanted
                    if equal == (operator == "=="):
                        selected.append(item)
            else:  # .*
                if isinstance(value, dict):
                    selected.extend(value.values())
                elif isinstance(value, list):
                    selected.extend(value)
        values = selected
    return values


# --- cells ------------------------------------------------------------------------------


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short ages: 45s, 3m12s, 5h, 3d4h, 2y."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years = hours // (24 * 365)
        return f"{years}y{(hours // 24) % 365}d"
    return f"{hours // (24 * 365)}y"


def _cell(column_type: str, value: Any) -> Any:
    match column_type:
        case "date":
            return human_age(value) if isinstance(value, str) else None
        case "integer":
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        case "number":
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        case "boolean":
            return value if isinstance(value, bool) else None
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --- columns per kind ---------------------------------------------------------------------


Column = tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]


def _col(name: str, getter: Callable[[dict[str, Any]], Any], *, type_: str = "string", priority: int = 0) -> Column:
    return ({"name": name, "type": type_, "format": "", "description": "", "priority": priority}, getter)


def _age(obj: dict[str, Any]) -> str:
    return human_age(obj["metadata"].get("creationTimestamp"))


def _ports(obj: dict[str, Any]) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    return (
        ",".join(
            f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
            for p in ports
        )
        or "<none>"
    )


def _node_status(obj: dict[str, Any]) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    return status + (",SchedulingDisabled" if (obj.get("spec") or {}).get("unschedulable") else "")


def _node_roles(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    roles = sorted(key.split("/", 1)[1] for key in labels if key.startswith("node-role.kubernetes.io/"))
    return ",".join(roles) or "<none>"


def _containers(obj: dict[str, Any], field: str) -> str:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return ",".join(str(c.get(field, "")) for c in spec.get("containers") or [])


def _selector(obj: dict[str, Any]) -> str:
    selector = (obj.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if isinstance(v, str)) or "<none>"


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


BUILTIN_COLUMNS: dict[str, list[Column]] = {
    "deployments": [
        _col("Ready", lambda o: f"{_status(o).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 0)}"),
        _col("Up-to-date", lambda o: _status(o).get("updatedReplicas", 0), type_="integer"),
        _col("Available", lambda o: _status(o).get("availableReplicas", 0), type_="integer"),
        _col("Age", _age),
        _col("Containers", lambda o: _containers(o, "name"), priority=1),
        _col("Images", lambda o: _containers(o, "image"), priority=1),
        _col("Selector", _selector, priority=1),
    ],
    "statefulsets": [
        _col("Ready", lambda o: f"{_status(o).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 0)}"),
        _col("Age", _age),
    ],
    "services": [
        _col("Type", lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        _col("Cluster-IP", lambda o: (o.get("spec") or {}).get("clusterIP", "<none>")),
        _col("External-IP", lambda o: ",".join((o.get("spec") or {}).get("externalIPs") or []) or "<none>"),
        _col("Port(s)", _ports),
        _col("Age", _age),
        _col("Selector", _selector, priority=1),
    ],
    "configmaps": [
        _col("Data", lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}), type_="integer"),
        _col("Age", _age),
    ],
    "secrets": [
        _col("Type", lambda o: o.get("type", "Opaque")),
        _col("Data", lambda o: len(o.get("data") or {}), type_="integer"),
        _col("Age", _age),
    ],
    "serviceaccounts": [_col("Secrets", lambda o: len(o.get("secrets") or []), type_="integer"), _col("Age", _age)],
    "namespaces": [_col("Status", lambda o: _status(o).get("phase", "Active")), _col("Age", _age)],
    "nodes": [
        _col("Status", _node_status),
        _col("Roles", _node_roles),
        _col("Age", _age),
        _col("Version", lambda o: (_status(o).get("nodeInfo") or {}).get("kubeletVersion", "")),
    ],
    "events": [
        _col(
            "Last Seen",
            lambda o: human_age(o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")),
        ),
        _col("Type", lambda o: o.get("type", "")),
        _col("Reason", lambda o: o.get("reason", "")),
        _col(
            "Object",
            lambda o: (
                f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name', '')}"
            ),
        ),
        _col("Message", lambda o: o.get("message", "")),
    ],
    "pods": [
        _col(
            "Ready",
            lambda o: (
                f"{sum(1 for c in _status(o).get('containerStatuses') or [] if c.get('ready'))}/{len((o.get('spec') or {}).get('containers') or [])}"
            ),
        ),
        _col("Status", lambda o: _status(o).get("phase", "Pending")),
        _col(
            "Restarts",
            lambda o: sum(c.get("restartCount", 0) for c in _status(o).get("containerStatuses") or []),
            type_="integer",
        ),
        _col("Age", _age),
    ],
    "customresourcedefinitions": [_col("Created At", lambda o: o["metadata"].get("creationTimestamp", ""))],
    "leases": [_col("Holder", lambda o: (o.get("spec") or {}).get("holderIdentity", "")), _col("Age", _age)],
    "jobs": [
        _col(
            "Status",
            lambda o: next(
                (c.get("type") for c in _status(o).get("conditions") or [] if c.get("status") == "True"), "Running"
            ),
        ),
        _col(
            "Completions", lambda o: f"{_status(o).get('succeeded', 0)}/{(o.get('spec') or {}).get('completions', 1)}"
        ),
        _col("Age", _age),
    ],
}


def _custom_columns(kind: Kind) -> list[Column]:
    if not kind.printer_columns:
        return [_col("Age", _age)]
    columns: list[Column] = []
    for spec in kind.printer_columns:
        definition = {
            "name": spec["name"],
            "type": spec.get("type", "string"),
            "format": spec.get("format", ""),
            "description": spec.get("description", ""),
            "priority": spec.get("priority", 0),
        }
        path = spec["jsonPath"]
        column_type = definition["type"]

        def getter(obj: dict[str, Any], path: str = path, column_type: str = column_type) -> Any:
            found = jsonpath(obj, path)
            return _cell(column_type, found[0]) if found else None

        columns.append((definition, getter))
    return columns


def columns_for(kind: Kind) -> list[Column]:
    if kind.custom:
        return _custom_columns(kind)
    return BUILTIN_COLUMNS.get(kind.plural, [_col("Age", _age)])


def partial_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def table(
    kind: Kind,
    objects: list[dict[str, Any]],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    continue_token: str | None = None,
) -> dict[str, Any]:
    columns = columns_for(kind)
    definitions = [dict(_NAME_COLUMN)] + [definition for definition, _ in columns]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"]] + [getter(obj) for _, getter in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj)
        rows.append(row)
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
