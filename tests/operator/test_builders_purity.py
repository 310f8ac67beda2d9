"""The operator's pure core imports no kopf, no kubernetes client and nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # imports in a fresh interpreter

PURE_MODULES = [
    "kascade.operator.settings",
    "kascade.operator.labels",
    "kascade.operator.engine_vllm",
    "kascade.operator.engine_transformers",
    "kascade.operator.build_tier",
    "kascade.operator.build_router",
    "kascade.operator.build_autoscaling",
    "kascade.operator.build_disruption",
    "kascade.operator.pod_security",
    "kascade.operator.builders",
    "kascade.operator.plan",
    "kascade.operator.conditions",
    "kascade.operator.counters",
    "kascade.operator.problems",
    "kascade.operator.cluster_needs",
    "kascade.operator.cascade_resource",
    "kascade.operator.drift",
    "kascade.operator.status_patch",
    "kascade.operator.notices",
    "kascade.operator.replacement",
    "kascade.operator.permissions",
    "kascade.operator.run_plan",
    "kascade.operator.distillation_schedule",
    "kascade.operator.promotion",
]
FORBIDDEN = [
    "kopf",
    "kubernetes",
    "aiohttp",
    "torch",
    "transformers",
    "kascade.operator.handlers",
    "kascade.operator.reconcile",
    "kascade.operator.kube_api",
]


def test_pure_core_imports_no_io_libraries() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in PURE_MODULES)
        + f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
