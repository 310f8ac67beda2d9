"""Where local mode finds model weights: turn a tier's `model.uri` into a folder on this machine.

`pkg://NAME` (a packaged model, see `catalog`), `hf://org/name[@revision]`,
`file:///path` or a plain path. `pvc://` and `s3://` live in a cluster and are
refused with a message saying what to use instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kascade.api.model_uri import ModelUri
from kascade.runtime.models.catalog import ModelNotAvailable, lookup
from kascade.runtime.models.packaged import ensure_packaged_model

if TYPE_CHECKING:
    from rich.console import Console


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
    location = ModelUri.parse(uri)
    if location.pkg_name is not None:
        return ensure_packaged_model(lookup(location.pkg_name), cache_dir=cache_dir, console=console)
    if location.scheme == "hf":
        return _snapshot_from_hub(location, token=hub_token)
    if location.in_cluster_only:
        raise ModelNotAvailable(
            f"{uri}: pvc:// and s3:// models are mounted or fetched by the operator inside a Kubernetes "
            "cluster and cannot be reached in local mode. Copy the model to this machine and use its "
            "folder path (or file://...), or use a packaged model such as pkg://smollm2-135m-instruct."
        )
    if location.path is None:
        raise ModelNotAvailable(
            f"{uri}: unknown model URI scheme. Use pkg://NAME, hf://org/name, file:///path or a local path."
        )
    path = Path(location.path)
    path = path.expanduser()
    if not path.exists():
        raise ModelNotAvailable(f"{uri}: no such file or folder on this machine ({path.resolve()}).")
    return path


def _snapshot_from_hub(location: ModelUri, *, token: str | None) -> Path:
    uri, repo_id, revision = location.raw, location.hf_repo_id or "", location.hf_revision
    if repo_id.count("/") != 1:
        raise ModelNotAvailable(f"{uri}: expected hf://org/name (optionally @revision).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotAvailable(
            f"{uri}: loading from the Hugging Face Hub needs huggingface_hub (pip install 'kascade[local]')."
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
