"""The sentence encoder exported to ONNX: the same cosines as torch's mean pooling, loaded and run without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kascade.runtime.models.catalog import ModelNotAvailable
from kascade.runtime.models.encoder import (
    ENCODER_MARKER,
    IMAGE_ENCODER_DIR,
    SentenceEncoder,
    ensure_onnx_encoder,
    onnx_encoder_dir,
)

TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital of France.",
    "def add(a, b):\n    return a + b",
    "",
    "The cat sat on the mat. " * 12,  # longer than the tiny export's 24 tokens: truncated alike
    "1 + 1 = 2",
]


def _torch_cosines(source: Path, left: list[str], right: list[str], max_tokens: int) -> list[float]:
    """Mean pooling over the attention mask and L2 normalisation, as sentence-transformers pools MiniLM."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    return (embed(left) * embed(right)).sum(-1).tolist()


@pytest.mark.slow  # loads a model
def test_onnx_cosines_match_torch_mean_pooled_cosines(tiny_encoder_onnx_dir: Path) -> None:
    source = tiny_encoder_onnx_dir.parent / "source"
    left, right = TEXTS, list(reversed(TEXTS))
    nonempty = [i for i, (a, b) in enumerate(zip(left, right, strict=True)) if a and b]
    expected = _torch_cosines(source, [left[i] for i in nonempty], [right[i] for i in nonempty], max_tokens=24)
    encoder = SentenceEncoder(tiny_encoder_onnx_dir, batch_tokens=48)  # several runs, sorted by length
    got = encoder.cosines(left, right)
    assert [got[i] for i in nonempty] == pytest.approx(expected, abs=1e-4)
    assert all(-1.0 - 1e-6 <= value <= 1.0 + 1e-6 for value in got)


@pytest.mark.slow  # loads a model
def test_embeddings_are_unit_rows_in_the_order_given(tiny_encoder_onnx_dir: Path) -> None:
    import numpy as np

    encoder = SentenceEncoder(tiny_encoder_onnx_dir, batch_tokens=60)
    rows = encoder.embed(TEXTS)
    assert rows.shape == (len(TEXTS), 32) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows[[i for i, text in enumerate(TEXTS) if text]], axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([encoder.embed([text]) for text in TEXTS])
    assert np.allclose(rows, one_by_one, atol=1e-5)  # padding and batching change nothing
    assert encoder.cosines([], []) == []
    with pytest.raises(ValueError, match="2 left texts but 1 right"):
        encoder.cosines(["a", "b"], ["a"])


@pytest.mark.slow  # starts a process
def test_loading_and_embedding_never_import_torch(tiny_encoder_onnx_dir: Path) -> None:
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kascade.runtime.models.encoder import SentenceEncoder\n"
        f"encoder = SentenceEncoder(Path({str(tiny_encoder_onnx_dir)!r}))\n"
        "print(round(encoder.cosines(['a cat'], ['a cat'])[0], 4))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[:2] == ["1.0", "['onnxruntime']"]


def test_a_folder_without_an_export_is_refused_saying_where_the_encoder_lives(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")  # an unfinished export: no marker
    with pytest.raises(ModelNotAvailable, match="no exported sentence encoder") as refused:
        SentenceEncoder(tmp_path)
    assert IMAGE_ENCODER_DIR in refused.value.message and "export it on first use" in refused.value.message


@pytest.mark.slow  # loads a model
def test_an_export_in_the_cache_is_used_as_it_is(tiny_encoder_onnx_dir: Path, tmp_path: Path) -> None:
    cached = onnx_encoder_dir(tmp_path)
    shutil.copytree(tiny_encoder_onnx_dir, cached)
    assert ensure_onnx_encoder(tmp_path) == cached  # nothing unpacked, nothing exported again
    marker = json.loads((cached / ENCODER_MARKER).read_text())
    assert marker == {"source": "source", "max_tokens": 24, "hidden_size": 32}
    assert SentenceEncoder(cached).cosines(["a"], ["a"]) == [pytest.approx(1.0, abs=1e-5)]


def test_the_runtime_image_exports_the_encoder_where_the_router_looks_for_it() -> None:
    dockerfile = (Path(__file__).resolve().parents[3] / "images" / "runtime.Dockerfile").read_text()
    assert "export_packaged_encoder(Path(IMAGE_ENCODER_DIR))" in dockerfile  # exported at build time, by torch
    copied = [line.split()[-1] for line in dockerfile.splitlines() if line.startswith("COPY --from=encoder ")]
    assert copied and any(IMAGE_ENCODER_DIR.startswith(f"{folder.rstrip('/')}/") for folder in copied)
