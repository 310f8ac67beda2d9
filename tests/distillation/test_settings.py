"""A run's settings, defined once: the options of `kascade distill` and a Job's `--settings` are the same model."""

from __future__ import annotations

import inspect
import json

import pytest
from typer.testing import CliRunner

from kascade.api.distill_settings import DistillSettings, setting_field
from kascade.api.loop import Gate, Training
from kascade.cli import app
from kascade.distill_command import _NOT_SETTINGS, distill

OWN = set(DistillSettings.model_fields) - {"training", "gate"}
BASE = {"student": "./student", "data": "./data.jsonl", "out": "./out"}


def test_the_three_models_share_no_field_name_so_a_flat_option_is_never_ambiguous() -> None:
    names = [*Training.model_fields, *Gate.model_fields, *OWN]
    assert len(names) == len(set(names))


def test_every_setting_is_an_option_of_kascade_distill_and_every_option_a_setting() -> None:
    options = set(inspect.signature(distill).parameters) - _NOT_SETTINGS
    assert options == set(Training.model_fields) | set(Gate.model_fields) | (OWN - {"device"})
    for name in options:
        assert setting_field(name)[1].description, f"{name} has no help"


def test_options_given_override_the_settings_and_the_rest_keep_the_models_defaults() -> None:
    base = {**BASE, "training": {"steps": 9, "alpha": 1.0}, "matcher": "number"}
    settings = DistillSettings.of_options({"steps": 5, "temperature": None, "min_slice_examples": 3}, base=base)
    assert settings.training.steps == 5 and settings.training.alpha == 1.0
    assert settings.training.temperature == Training().temperature and settings.gate.min_slice_examples == 3
    assert settings.matcher == "number"
    with pytest.raises(ValueError, match="steps_per_epoch is not a distillation setting"):
        DistillSettings.of_options({"steps_per_epoch": 3}, base=BASE)


def test_a_checkpoint_resumes_with_more_steps_or_another_gate_but_not_another_temperature() -> None:
    settings = DistillSettings.model_validate(BASE)
    same = DistillSettings.of_options({"steps": 400, "eval_every": 7, "min_agreement_gain": 0.5}, base=BASE)
    assert same.fingerprint() == settings.fingerprint()
    assert DistillSettings.of_options({"temperature": 4.0}, base=BASE).fingerprint() != settings.fingerprint()


def test_the_settings_of_a_job_are_validated_by_the_command_with_the_option_named() -> None:
    job_settings = json.dumps({**BASE, "training": {"steps": 0}})
    result = CliRunner().invoke(app, ["distill", "--settings", job_settings], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--steps: Input should be greater than or equal to 1" in result.output
    offline = CliRunner().invoke(
        app, ["distill", "--settings", json.dumps(BASE), "--match", "code"], env={"COLUMNS": "200"}
    )
    assert offline.exit_code == 2 and "matcher code judges offline only" in offline.output
    missing = CliRunner().invoke(app, ["distill", "--data", "x.jsonl"], env={"COLUMNS": "200"})
    assert missing.exit_code == 2 and "--student is required" in missing.output
