"""deploy/kascade.yaml: the plain-kubectl install, rendered from the chart with its defaults.

It must be what `python scripts/render_deploy.py` renders now (a stale file
fails here), and the documented commands must work with the real kubectl:

    kubectl apply -f crds/
    kubectl apply -f deploy/kascade.yaml

run here against the API-server stand-in (kascade.testing), which validates
built-in objects against Kubernetes' schemas as a real server would.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest
import yaml
from chart_testkit import (
    CRDS,
    RELEASE,
    REPO,
    VALUE_SETS,
    helm,
    kubectl,
    notes,
    operator_container,
    render,
    render_values,
    template,
)

from kascade.testing import StandinApiServer

DEPLOY = REPO / "deploy" / "kascade.yaml"
SCRIPT = REPO / "scripts" / "render_deploy.py"
NAMESPACE = "kascade-system"


def render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_deploy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def deploy_objects() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(DEPLOY.read_text()) if doc]


@pytest.mark.slow  # helm template
def test_deploy_manifest_is_up_to_date_with_the_chart():
    stale = "deploy/kascade.yaml is stale: run `python scripts/render_deploy.py`"
    assert DEPLOY.read_text() == render_script().render(), stale


def test_the_render_script_needs_no_kascade_package():
    """It runs from a bare checkout: it loads only the standard library (and kubetools.py as a plain file)."""
    source = SCRIPT.read_text()
    assert not re.search(r"^\s*(from|import)\s+kascade\b", source, re.M)


@pytest.mark.slow  # helm template
def test_deploy_manifest_is_the_chart_defaults_behind_a_namespace():
    objects = deploy_objects()
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "kascade", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    assert objects[1:] == render("defaults")
    kinds = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
    assert {obj["kind"] for obj in objects} == kinds
    assert all(obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE for obj in objects)
    assert "--all-namespaces" in operator_container(objects)["args"]


def test_every_object_of_the_deploy_manifest_passes_kubernetes_validate_strict():
    for obj in deploy_objects():
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


# --- the kubectl path, for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinApiServer]:
    with StandinApiServer(namespaces=("default", "kube-system", "team-a", "team-b")) as server:
        yield server


def documented_commands(section: str) -> list[list[str]]:
    """The commands of the first ```bash block under `## section` of docs/install.md, split as a shell would."""
    text = (REPO / "docs" / "install.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_documented_kubectl_install_is_the_tested_one():
    assert documented_commands("Plain kubectl") == [
        ["kubectl", "apply", "-f", "crds/"],
        ["kubectl", "apply", "-f", "deploy/kascade.yaml"],
        ["kubectl", "-n", NAMESPACE, "rollout", "status", "deployment/kascade-operator"],
    ]


@pytest.mark.slow  # helm template
def test_the_documented_helm_install_renders_the_chart_defaults_with_your_registry():
    """`helm install` as docs/install.md writes it, run client-side (no cluster): the defaults, with the images
    under the registry you pushed them to ($REGISTRY, as a shell would expand it)."""
    (install, rollout) = documented_commands("Helm")
    assert install[:3] == ["helm", "install", RELEASE] and rollout[0] == "kubectl"
    registry = "registry.example.com/ml"
    assert "imageRegistry=$REGISTRY" in install
    done = helm(*(arg.replace("$REGISTRY", registry) for arg in install[1:]), "--dry-run=client", cwd=REPO)
    manifest = done.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    assert [doc for doc in yaml.safe_load_all(manifest) if doc] == render_values({"imageRegistry": registry})


@pytest.mark.slow  # kubectl, the API-server stand-in
def test_kubectl_apply_installs_kascade(cluster: StandinApiServer):
    kubeconfig = cluster.kubeconfig_path
    assert "modelcascades.kascade.dev created" in kubectl("apply", "-f", str(CRDS), kubeconfig=kubeconfig).stdout
    applied = kubectl("apply", "-f", str(DEPLOY), kubeconfig=kubeconfig).stdout
    for created in (
        f"namespace/{NAMESPACE}",
        "serviceaccount/kascade-operator",
        "clusterrole.rbac.authorization.k8s.io/kascade-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/kascade-operator",
        "deployment.apps/kascade-operator",
    ):
        assert f"{created} created" in applied, applied
    # What NOTES.txt tells the user to run next, in order.
    rollout = kubectl(
        "-n", NAMESPACE, "rollout", "status", "deployment/kascade-operator", "--timeout=30s", kubeconfig=kubeconfig
    ).stdout
    assert "successfully rolled out" in rollout
    example = re.search(r"<<'YAML'\n(.*?)\nYAML\n", notes({}), re.S).group(1)
    manifest = cluster.kubeconfig_path.parent / "example.yaml"
    manifest.write_text(example)
    created = kubectl("apply", "-n", "default", "-f", str(manifest), kubeconfig=kubeconfig).stdout
    assert "modelcascade.kascade.dev/demo created" in created
    listed = kubectl("get", "modelcascades", "-n", "default", kubeconfig=kubeconfig).stdout
    assert re.search(r"^demo\s", listed, re.M), listed


@pytest.mark.slow  # kubectl, the API-server stand-in
def test_applying_the_deploy_manifest_again_changes_nothing(cluster: StandinApiServer):
    kubectl("apply", "-f", str(DEPLOY), kubeconfig=cluster.kubeconfig_path)
    again = kubectl("apply", "-f", str(DEPLOY), kubeconfig=cluster.kubeconfig_path).stdout
    assert again.count("unchanged") == len(deploy_objects()), again


@pytest.mark.slow  # helm, kubectl, the API-server stand-in
def test_the_namespaced_chart_applies_to_an_api_server(cluster: StandinApiServer, tmp_path: Path):
    """`helm template` of the namespaced value set, applied: Roles land in the watched namespaces."""
    kubeconfig = cluster.kubeconfig_path
    if cluster.get("namespaces", NAMESPACE) is None:  # run alone, without the install above
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    rendered = tmp_path / "namespaced.yaml"
    rendered.write_text(template(VALUE_SETS["namespaced"], release=f"{RELEASE}-namespaced").stdout)
    applied = kubectl("apply", "-f", str(rendered), kubeconfig=kubeconfig).stdout
    assert "role.rbac.authorization.k8s.io/kascade-namespaced-operator created" in applied, applied
    for namespace in ("team-a", "team-b"):
        roles = kubectl("get", "roles", "-n", namespace, "-o", "name", kubeconfig=kubeconfig).stdout.split()
        assert roles == ["role.rbac.authorization.k8s.io/kascade-namespaced-operator"]
    assert cluster.get("clusterroles", "kascade-namespaced-operator") is None
