"""Local mode's manifest: read and check a ModelCascade before anything is loaded.

Kubernetes Secrets do not exist here. A Secret key reference `{name, key}` is
read from the environment variable `<NAME>_<KEY>`, upper-cased, every
character that is not a letter or digit turned into `_`: Secret `openai-key`,
key `api-key` → `OPENAI_KEY_API_KEY`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from kascade.api.errors import validation_problems
from kascade.api.modelcascade import EngineKind, ModelCascade, SecretKeyRef
from kascade.runtime.config import judge_api_key_secret

DEMO_MANIFEST = "demo.yaml"


LOCAL_DISTILLATION = (
    "spec.distillation runs in a cluster (the operator schedules Distillation Jobs and promotes students); "
    "local mode does not: remove it here, and distil from the log by hand with `kascade distill`, then point "
    "the tier's model.uri at the student"
)


class LocalModeError(Exception):
    """Local mode cannot run this manifest; `message` tells the user what to change."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def load_manifest(path: Path | None) -> ModelCascade:
    """Read and validate a ModelCascade; None reads the embedded default (demo.yaml)."""
    if path is None:
        text = importlib.resources.files("kascade.runtime.local").joinpath(DEMO_MANIFEST).read_text(encoding="utf-8")
        source = "the embedded default manifest"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LocalModeError(f"no manifest at {path}") from None
        except OSError as exc:
            raise LocalModeError(f"cannot read {path}: {exc.strerror or exc}") from None
        source = str(path)
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise LocalModeError(f"{source} is not valid YAML:\n{exc}") from None
    cascades = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "ModelCascade"]
    if len(cascades) != 1:
        found = "none" if not cascades else str(len(cascades))
        raise LocalModeError(
            f"{source} must hold exactly one document of kind ModelCascade (found {found}); "
            "see examples/local-demo.yaml"
        )
    try:
        return ModelCascade.model_validate(cascades[0])
    except ValidationError as exc:
        raise LocalModeError(f"{source} is not a valid ModelCascade:\n{format_validation_error(exc)}") from None


def format_validation_error(error: ValidationError) -> str:
    """One indented line per problem, the field path as it is written in YAML: `spec.tiers[1].accept: ...`."""
    return "\n".join(f"  {problem}" for problem in validation_problems(error))


def secret_env_var(ref: SecretKeyRef) -> str:
    """The environment variable that stands in for a Secret key in local mode."""
    return re.sub(r"[^A-Za-z0-9]", "_", f"{ref.name}_{ref.key}").upper()


def _read_secret(ref: SecretKeyRef, what: str) -> str:
    variable = secret_env_var(ref)
    value = os.environ.get(variable, "").strip()
    if not value:
        raise LocalModeError(
            f"{what} comes from Secret {ref.name!r} key {ref.key!r}. Local mode has no Secrets: "
            f"set the environment variable {variable} (e.g. `export {variable}=...`) and run again."
        )
    return value


def check_runnable(cascade: ModelCascade) -> None:
    """Every check that needs no model loaded, so a manifest fails in a second, not after a download."""
    for tier in cascade.spec.tiers:
        if tier.engine is EngineKind.vllm and importlib.util.find_spec("vllm") is None:
            raise LocalModeError(
                f"tier {tier.name!r} uses engine vllm, but vLLM is not installed here (it ships CUDA-only "
                "wheels for GPU machines). In local mode use `engine: transformers` for this tier, "
                "which runs the same model in-process on CPU or GPU."
            )
        if tier.engine is EngineKind.external and tier.api_key_secret is not None:
            _read_secret(tier.api_key_secret, f"tier {tier.name!r}'s API key")
        if tier.engine is not EngineKind.external and tier.model.location.in_cluster_only:
            raise LocalModeError(
                f"tier {tier.name!r}: {tier.model.uri} lives in the cluster (pvc:// and s3:// are mounted "
                "or fetched by the operator). In local mode point model.uri at a folder on this machine, "
                "hf://org/name, or a packaged model such as pkg://smollm2-135m-instruct."
            )
    if cascade.spec.router.api_key_secret is not None:
        _read_secret(cascade.spec.router.api_key_secret, "the router's client API key")
    judge_key = judge_api_key_secret(cascade)
    if judge_key is not None:
        _read_secret(judge_key, "the judge's API key (calibration.judge.apiKeySecret)")
    if cascade.spec.distillation is not None:
        raise LocalModeError(LOCAL_DISTILLATION)
