"""Operator settings: pinned defaults and KASCADE_* overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kascade import __version__
from kascade.operator.settings import OperatorSettings, SettingsError


def test_defaults_pin_the_images() -> None:
    settings = OperatorSettings()
    repository, _, tag = settings.vllm_image.partition(":")
    assert repository == "vllm/vllm-openai"
    assert tag.startswith("v") and tag != "latest"
    assert settings.runtime_image == f"ghcr.io/kascade-dev/kascade-runtime:{__version__}"
    assert settings.router_port == settings.engine_port == 8000
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in settings.gpu_tolerations
    assert settings.startup_budget_seconds == 30 * 60


def test_environment_overrides() -> None:
    settings = OperatorSettings.from_env(
        {
            "KASCADE_VLLM_IMAGE": "vllm/vllm-openai:v0.11.1",
            "KASCADE_ROUTER_PORT": "9000",
            "KASCADE_TIER_NODE_SELECTOR": '{"pool": "gpu"}',
            "KASCADE_GPU_TOLERATIONS": "[]",
            "KASCADE_MODEL_CACHE_STORAGE_CLASS": "fast",
            "KASCADE_ROUTER_STATUS_REPORT_INTERVAL_SECONDS": "30",
            "UNRELATED": "x",
        }
    )
    assert settings.vllm_image == "vllm/vllm-openai:v0.11.1"
    assert settings.router_port == 9000
    assert settings.tier_node_selector == {"pool": "gpu"}
    assert settings.gpu_tolerations == ()
    assert settings.model_cache_storage_class == "fast"
    assert settings.router_status_report_interval_seconds == 30.0
    assert OperatorSettings.from_env({}) == OperatorSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KASCADE_ROUTER_PORT", "eighty"), ("KASCADE_TIER_NODE_SELECTOR", "{not json"), ("KASCADE_ENGINE_PORT", "0")],
)
def test_bad_environment_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        OperatorSettings.from_env({variable: value})


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        OperatorSettings(vllm_imgae="typo")  # type: ignore[call-arg]
