"""Every bad ModelCascade of tests/api is refused by the real API server, naming the same field.

tests/api checks the shipped CRD offline (jsonschema for the schema, cel-python for the CEL rules);
here the CRD is installed in a real kube-apiserver and each case is sent as a server-side dry run.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kascade.testing.control_plane import ControlPlane

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from cluster_testkit import CRDS
from test_bad_manifests import CASES, GOOD, Case  # (tests/api is not a package)

NAMESPACE = "refusals"


@pytest.fixture(scope="module")
def crds_installed(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    # The chart installed them (test_cascades); alone, this module installs them itself.
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    control_plane.kubectl("create", "namespace", NAMESPACE)
    yield control_plane
    control_plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def dry_run_create(plane: ControlPlane, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": NAMESPACE}}
    path = f"/apis/kascade.dev/v1alpha1/namespaces/{NAMESPACE}/modelcascades"
    with plane.client() as client:
        for _ in range(50):  # the CRD's REST endpoint appears a moment after Established
            response = client.post(path, params={"dryRun": "All", "fieldValidation": "Strict"}, json=body)
            if response.status_code != 404:
                return response.status_code, response.json()
            time.sleep(0.2)
    return response.status_code, response.json()


def named_field(case: Case) -> str:
    """The field the offline refusal names, in the API server's spelling (spec.tiers[0].replicas)."""
    path, message = case.server_says.split(": ", 1)
    if path == "<root>":  # jsonschema names the object that lacks a property; the API server names the property
        return message.split("'")[1]
    return ".".join(f"[{part}]" if part.isdigit() else part for part in path.split(".")).replace(".[", "[")


def test_the_good_manifest_is_accepted(crds_installed: ControlPlane) -> None:
    status, body = dry_run_create(crds_installed, copy.deepcopy(GOOD))
    assert status == 201, body


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_real_api_server_refuses_it_naming_the_field(crds_installed: ControlPlane, case: Case) -> None:
    manifest = copy.deepcopy(GOOD)
    case.change(manifest)
    status, body = dry_run_create(crds_installed, manifest)
    # 422 Invalid for a value the schema or a rule refuses; 400 BadRequest when the body does not even decode
    # into the schema's shape (a list where an object belongs).
    assert status in (400, 422), body
    message = body["message"]
    fields = [cause.get("field", "") for cause in body.get("details", {}).get("causes", [])]
    where = named_field(case)
    assert any(f == where or f.startswith(where) for f in fields) or where in message, (where, fields, message)
    if case.refused_by == "cel":
        rule_message = case.server_says.split(": ", 1)[1]
        assert rule_message in message, message
