"""Both ways of installing give a working `kascade`: a wheel (`pip install .`) and editable (`pip install -e .`).

The repository maps its top-level folders under one import package, because
Python's standard library owns the name `operator`; these tests catch a
mapping that works in one install mode and not the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kascade

REPO = Path(__file__).resolve().parents[1]


def test_the_running_install_maps_the_folders_under_kascade():
    import kascade.api
    import kascade.operator
    import kascade.runtime
    import kascade.runtime.engines

    assert Path(kascade.api.__file__).parent.name == "api"
    assert Path(kascade.runtime.__file__).parent.name == "runtime"
    assert Path(kascade.operator.__file__).parent.name == "operator"
    import operator

    assert hasattr(operator, "itemgetter")  # the standard library's operator is untouched


@pytest.mark.slow  # builds and installs a wheel
def test_a_wheel_install_gives_a_working_command(tmp_path: Path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    installed = target / "kascade"
    assert (installed / "api" / "modelcascade.py").is_file()
    assert (installed / "runtime" / "router.py").is_file()
    assert (installed / "runtime" / "engines" / "http.py").is_file()
    assert (installed / "runtime" / "engines" / "transformers" / "engine.py").is_file()
    assert (installed / "testing" / "fixed_upstream.py").is_file()
    assert (installed / "operator" / "__init__.py").is_file()
    # Run from an empty folder with only the wheel's files on the path, so the repo cannot leak in.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kascade.runtime.router, kascade.api.modelcascade, kascade; "
            "import kascade.runtime.engines.transformers, kascade.testing.fixed_upstream; "
            "print(kascade.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(target))
    command = subprocess.run(
        [str(target / "bin" / "kascade"), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert command.returncode == 0, command.stderr
    for subcommand in ("up", "route", "serve", "crds"):
        assert subcommand in command.stdout


@pytest.mark.slow  # a fresh interpreter
def test_the_editable_install_points_at_the_repository():
    if "site-packages" in kascade.__file__:
        import pytest

        pytest.skip("this environment holds a wheel install; the editable case is checked by .ci/run")
    assert Path(kascade.__file__).resolve().parent == REPO / "kascade"
    command = subprocess.run([sys.executable, "-m", "kascade", "--help"], capture_output=True, text=True, timeout=120)
    assert command.returncode == 0, command.stderr
