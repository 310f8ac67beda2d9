"""Every child rendered for every example passes Kubernetes' own schemas, strictly."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import build_children
from kascade.operator.labels import (
    CASCADE_LABEL,
    MANAGED_BY_LABEL,
    SPEC_HASH_ANNOTATION,
    spec_hash,
)
from kascade.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
# The oldest Kubernetes we support and the newest schema kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _cascades(path: Path) -> list[ModelCascade]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "ModelCascade"]
    return [ModelCascade.model_validate(doc) for doc in docs]


def _validate(manifest: dict, version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def test_examples_are_there() -> None:
    assert len(EXAMPLE_FILES) >= 3


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_child_passes_kubernetes_validate_strict(path: Path, version: str) -> None:
    settings = OperatorSettings()
    for cascade in _cascades(path):
        for child in build_children(cascade, settings):
            _validate(child, version)


def test_the_validator_does_refuse_a_misspelt_field() -> None:
    """Guards the test above: strict validation is on and sees deep into pod specs."""
    cascade = _cascades(EXAMPLES / "chat-vllm-gpu.yaml")[0]
    deployment = next(c for c in build_children(cascade, OperatorSettings()) if c["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment, K8S_VERSIONS[0])


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_children_are_labelled_hashed_and_unowned(path: Path) -> None:
    for cascade in _cascades(path):
        children = build_children(cascade, OperatorSettings())
        keys = [(c["kind"], c["metadata"]["name"]) for c in children]
        assert len(keys) == len(set(keys)), "two children share a kind and name"
        for child in children:
            metadata = child["metadata"]
            assert DNS_1035.match(metadata["name"]) and len(metadata["name"]) <= 63
            assert metadata["namespace"] == (cascade.metadata.namespace or "default")
            assert metadata["labels"][MANAGED_BY_LABEL] == "kascade-operator"
            assert metadata["labels"][CASCADE_LABEL] == cascade.metadata.name
            assert metadata["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(child)
            assert "ownerReferences" not in metadata  # the handler adopts them (kopf.adopt)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_building_twice_gives_the_same_children(path: Path) -> None:
    for cascade in _cascades(path):
        assert build_children(cascade, OperatorSettings()) == build_children(cascade, OperatorSettings())
