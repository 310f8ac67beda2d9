"""The answer cache's key for a model: a distilled student is not the student it started from."""

from __future__ import annotations

import shutil
from pathlib import Path

from kascade.api.modelcascade import Tier
from kascade.evaluation.collect import model_identity


def _tier(path: Path) -> Tier:
    return Tier.model_validate({"name": "small", "engine": "transformers", "model": {"uri": str(path)}})


def test_same_names_and_sizes_with_other_weights_are_another_model(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"\x00" * 64)
    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    (tuned / "model.safetensors").write_bytes(b"\x01" * 64)  # same size: only the contents differ
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    (copy / "provenance.json").write_text("{}")  # what is not a weight or the config does not count
    assert model_identity(_tier(base), base) != model_identity(_tier(tuned), tuned)
    assert model_identity(_tier(base), base) == model_identity(_tier(copy), copy)
