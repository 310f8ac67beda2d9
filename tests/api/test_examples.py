"""Every manifest in examples/ is a ModelCascade the API server and the operator both accept."""

from __future__ import annotations

from pathlib import Path

import pytest
from crd_testkit import EXAMPLES, cel_failures, load_documents, schema_errors

from kascade.api.modelcascade import ModelCascade, Task

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
REQUIRED = {"chat-vllm-gpu.yaml", "external-last-tier.yaml", "classify.yaml"}


def _cascades(path: Path) -> list[dict]:
    docs = [doc for doc in load_documents(path) if doc.get("kind") == "ModelCascade"]
    assert docs, f"{path.name} holds no ModelCascade"
    return docs


def test_the_documented_examples_exist() -> None:
    assert REQUIRED <= {path.name for path in EXAMPLE_FILES}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_passes_the_crd_schema(path: Path) -> None:
    for doc in _cascades(path):
        assert schema_errors(doc) == [], f"{path.name} is refused by the CRD schema"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_passes_the_crd_cel_rules(path: Path) -> None:
    for doc in _cascades(path):
        assert cel_failures(doc) == [], f"{path.name} is refused by the CRD's CEL rules"
        assert cel_failures(doc, defaults=False) == []


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_parses_with_the_model(path: Path) -> None:
    for doc in _cascades(path):
        cascade = ModelCascade.model_validate(doc)
        # What the operator writes back (a dump of the model) is accepted by the server too.
        dumped = cascade.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert schema_errors(dumped) == [] and cel_failures(dumped) == []


def test_examples_show_what_they_promise() -> None:
    chat = ModelCascade.model_validate(_cascades(EXAMPLES / "chat-vllm-gpu.yaml")[0])
    assert [t.engine.value for t in chat.spec.tiers] == ["vllm", "vllm"]
    assert chat.spec.tiers[-1].resources.gpus == 4
    assert "--tensor-parallel-size=4" in chat.spec.tiers[-1].engine_args

    external = ModelCascade.model_validate(_cascades(EXAMPLES / "external-last-tier.yaml")[0])
    assert [t.engine.value for t in external.spec.tiers] == ["vllm", "vllm", "external"]
    assert external.spec.tiers[-1].model.uri.startswith("https://")
    assert external.spec.tiers[-1].api_key_secret is not None

    classify = ModelCascade.model_validate(_cascades(EXAMPLES / "classify.yaml")[0])
    assert classify.spec.task is Task.classify
    assert classify.spec.tiers[0].accept is not None and classify.spec.tiers[0].accept.method.value == "maxProb"
