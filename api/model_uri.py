"""Where a tier's model lives: one parser for `model.uri`, used by the operator, local mode and the server.

Accepted forms (the field's description in the CRD says the same):

- `hf://org/name[@revision]`: a Hugging Face Hub repository;
- `pvc://claim/path`: a folder on a PersistentVolumeClaim (cluster only);
- `s3://bucket/prefix`: an S3-compatible object store (cluster only);
- `pkg://name`: a model packaged for local mode (see `kascade.runtime.models.catalog`);
- `http(s)://…`: an OpenAI-compatible base URL (engine external);
- `file:///abs/path` or a plain path: a folder on the machine or in the container.

Pure: no I/O. Whether a scheme suits an engine is decided by the callers
(the operator's conditions, local mode's catalog), which know the engines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", re.DOTALL)

PATH = "path"
"""The scheme given to plain paths and `file://` URIs."""

CLUSTER_ONLY_SCHEMES = frozenset({"pvc", "s3"})
"""Schemes only a cluster can reach: the operator mounts or fetches them."""


@dataclass(frozen=True)
class ModelUri:
    """A parsed `model.uri`. `scheme` is lower-case: hf, pvc, s3, pkg, http, https, path, or an unknown one as written."""

    raw: str
    scheme: str
    rest: str

    @classmethod
    def parse(cls, uri: str) -> ModelUri:
        match = _SCHEME.match(uri)
        if match is None:
            return cls(raw=uri, scheme=PATH, rest=uri)
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "file":
            return cls(raw=uri, scheme=PATH, rest=rest)
        return cls(raw=uri, scheme=scheme, rest=rest)

    def __str__(self) -> str:
        return self.raw

    @property
    def is_path(self) -> bool:
        return self.scheme == PATH

    @property
    def is_plain_path(self) -> bool:
        """Written as a path (`/models/x`, `./x`), not as a `file://` URI."""
        return self.scheme == PATH and self.raw == self.rest

    @property
    def in_cluster_only(self) -> bool:
        return self.scheme in CLUSTER_ONLY_SCHEMES

    @property
    def path(self) -> str | None:
        """The local or in-container path of a plain path or `file://` URI."""
        return self.rest if self.is_path else None

    @property
    def hf_repo_id(self) -> str | None:
        """`org/name` of an `hf://org/name@rev` URI."""
        return self.rest.partition("@")[0].strip("/") if self.scheme == "hf" else None

    @property
    def hf_revision(self) -> str | None:
        return (self.rest.partition("@")[2] or None) if self.scheme == "hf" else None

    @property
    def pvc_claim(self) -> str | None:
        """The claim of a `pvc://claim/path` URI ('' when the URI names none)."""
        return self.rest.partition("/")[0] if self.scheme == "pvc" else None

    @property
    def pvc_path(self) -> str | None:
        """The folder inside the claim, without leading or trailing slashes."""
        return self.rest.partition("/")[2].strip("/") if self.scheme == "pvc" else None

    @property
    def pkg_name(self) -> str | None:
        """The catalog name of a `pkg://name` URI."""
        return self.rest if self.scheme == "pkg" else None
