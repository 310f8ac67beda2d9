"""Operator-wide settings: images, ports, GPU scheduling defaults, probe budgets, the drift and GPU-hour intervals.

One `OperatorSettings` value is made at startup (`OperatorSettings.from_env()`,
in the handler's `@kopf.on.startup()`) and passed explicitly to every builder;
nothing here is a module global. Every field can be overridden by an
environment variable named `KASCADE_<FIELD_NAME_IN_UPPER_SNAKE_CASE>`, e.g.
`KASCADE_VLLM_IMAGE=registry.example.com/vllm/vllm-openai:v0.33.0`. Lists and mappings are written
as JSON (`KASCADE_GPU_TOLERATIONS='[{"key": "gpu", "operator": "Exists"}]'`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kascade import __version__

ENV_PREFIX = "KASCADE_"

# vLLM's official OpenAI-compatible server, pinned: a floating tag would change
# the engine under running cascades whenever a node pulls again. The chart's
# default names the same tag; scripts/vllm-contract.sh checks the router's
# requests and the rendered `vllm serve` arguments against this release.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
# The runtime image's user (images/runtime.Dockerfile), given to every pod.
DEFAULT_RUN_AS_USER = 65532
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/kascade-dev/kascade-runtime:{__version__}"

MAX_RECONCILE_INTERVAL_S = 3600

DEFAULT_GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    # The NVIDIA GPU operator and the managed clouds taint GPU nodes this way.
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)


class SettingsError(ValueError):
    """A KASCADE_* environment variable holds a value the operator cannot use."""


class OperatorSettings(BaseModel):
    """What the operator puts into every cascade's children, apart from the cascade's own spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Images
    vllm_image: str = Field(default=DEFAULT_VLLM_IMAGE, min_length=1, description="Engine vllm.")
    runtime_image: str = Field(
        default=DEFAULT_RUNTIME_IMAGE, min_length=1, description="The router and engine transformers (kascade serve)."
    )
    runtime_gpu_image: str = Field(
        default=f"{DEFAULT_RUNTIME_IMAGE}-cuda",
        min_length=1,
        description="Engine transformers on GPUs: the runtime image's CUDA build (the CPU build cannot use a GPU).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    run_as_user: int | None = Field(
        default=DEFAULT_RUN_AS_USER,
        ge=1,
        description=(
            "UID, GID and fsGroup of every pod (tiers, router, distillation runs; the vLLM image would run as "
            "root). Empty (None): leave them to the platform, as OpenShift's restricted SCC assigns them."
        ),
    )

    # Ports (container ports and Service ports alike)
    router_port: int = Field(default=8000, ge=1, le=65535)
    engine_port: int = Field(default=8000, ge=1, le=65535)

    # Scheduling of tier pods
    gpu_tolerations: tuple[dict[str, Any], ...] = Field(
        default=DEFAULT_GPU_TOLERATIONS, description="Added to every GPU tier's pods, before the tier's own."
    )
    tier_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels every tier's pods require; the gpuType selector and the tier's own win over it.",
    )

    # Volumes
    model_cache_path: str = Field(default="/cache", description="Where the model download cache is mounted.")
    model_cache_size: str = Field(default="200Gi", description="Size limit of the download cache (hf://, pkg://).")
    model_cache_storage_class: str | None = Field(
        default=None,
        description=(
            "When set, the download cache is a generic ephemeral volume (a PVC per pod) of this storage "
            "class instead of an emptyDir on the node's disk; large models rarely fit a node's ephemeral storage."
        ),
    )
    model_mount_path: str = Field(default="/mnt/models", description="Where pvc:// model claims are mounted.")
    shm_size: str | None = Field(
        default=None,
        description="Size limit of vLLM's /dev/shm (memory-backed); None: no limit (counts against pod memory).",
    )

    # Probes. Large models take long to download and load: the startup probe
    # allows period x failureThreshold seconds before the kubelet restarts the pod.
    startup_probe_period_seconds: int = Field(default=10, ge=1)
    startup_probe_failure_threshold: int = Field(default=180, ge=1, description="180 x 10 s = 30 minutes.")
    liveness_probe_period_seconds: int = Field(default=15, ge=1)
    liveness_probe_failure_threshold: int = Field(default=4, ge=1)
    readiness_probe_period_seconds: int = Field(default=5, ge=1)
    probe_timeout_seconds: int = Field(default=5, ge=1)

    # The router
    router_cpu: str = "250m"
    router_memory: str = "512Mi"
    router_status_report_interval_seconds: float = Field(
        default=15.0, gt=0, description="How often each router replica writes its counters into the status."
    )

    # Autoscaled tiers (tiers[].autoscaling; operator/build_autoscaling.py)
    autoscaler: Literal["auto", "keda", "hpa"] = Field(
        default="auto",
        description=(
            "What scales an autoscaled tier: auto: a KEDA ScaledObject when the cluster serves keda.sh/v1alpha1, "
            "else an autoscaling/v2 HorizontalPodAutoscaler; keda or hpa: that one, whatever is installed."
        ),
    )
    prometheus_address: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        min_length=1,
        description=(
            "The Prometheus that scrapes the routers' metrics (the chart's ServiceMonitor): KEDA's prometheus "
            "trigger asks it for each tier's requests in flight and queued."
        ),
    )
    hpa_cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=100,
        description=(
            "The CPU utilization an HPA aims at when the cluster serves no external metrics API "
            "(external.metrics.k8s.io) to read the routers' load from."
        ),
    )

    # The drift reconcile
    reconcile_interval_seconds: float = Field(
        default=15.0,
        description="How often each cascade is reconciled without a change: drift, readiness, router counters.",
    )

    gpu_hours_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How often the GPU-hours of a cascade are written when nothing else in its status changes "
            "(a tier holds GPUs, no traffic): one status write per interval. Any other status write brings "
            "them up to date too."
        ),
    )

    @field_validator("reconcile_interval_seconds", mode="before")
    @classmethod
    def _interval_in_range(cls, value: Any) -> float:
        # Own messages: they read as a sentence after the variable's name (see `from_env`).
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number of seconds, not {value!r}") from None
        if not 0 < seconds <= MAX_RECONCILE_INTERVAL_S:
            raise ValueError(f"must lie in (0, {MAX_RECONCILE_INTERVAL_S}] seconds, not {value!r}")
        return seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Defaults overridden by KASCADE_* variables of `environ` (default: the process environment).

        Raises `SettingsError` naming the variable when a value does not fit.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            variable = ENV_PREFIX + name.upper()
            raw = environ.get(variable)
            if raw is None or (name == "reconcile_interval_seconds" and not raw.strip()):
                continue  # a blank interval means the default, as it always has (the chart may render one)
            annotation = str(field.annotation)
            if any(word in annotation for word in ("dict", "tuple", "list")):
                try:
                    values[name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{variable} must be JSON ({exc.msg}): {raw!r}") from None
            elif raw == "" and "None" in annotation:
                values[name] = None
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(_env_problem(error) for error in exc.errors())
            raise SettingsError(f"invalid operator settings from the environment: {problems}") from None

    @property
    def startup_budget_seconds(self) -> int:
        """How long a tier may take to load its model before the kubelet restarts it."""
        return self.startup_probe_period_seconds * self.startup_probe_failure_threshold


def _env_problem(error: Mapping[str, Any]) -> str:
    """`KASCADE_X must ...` for this module's own validators, `KASCADE_X: <pydantic's message>` otherwise."""
    variable = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}"
    if error["type"] == "value_error":
        return f"{variable} {str(error['msg']).removeprefix('Value error, ')}"
    return f"{variable}: {error['msg']}"
