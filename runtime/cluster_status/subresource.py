"""Where a process in a pod writes a custom resource's status: the API server, its credentials, the status URL.

Shared by the router's counter reports (`status_report.py`, a ModelCascade)
and `kascade distill --report-to` (`kascade.distillation.report`, a
Distillation). In a pod the API server comes from KUBERNETES_SERVICE_HOST/PORT
and the credentials from the ServiceAccount's mount. A missing token file
means no Authorization header (a test's stand-in, `kubectl proxy`); a missing
CA file means the system's CAs.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kascade.api.modelcascade import GROUP, VERSION

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class StatusTarget(BaseModel):
    """One object's status subresource, and how to reach the API server that holds it.

    Subclasses name the resource (`plural`) and add what their reporter needs.
    """

    model_config = ConfigDict(extra="forbid")

    plural: ClassVar[str]

    namespace: str
    name: str = Field(description="The object's name.")
    api_server: str | None = Field(
        default=None, description="API server URL; default: the in-cluster KUBERNETES_SERVICE_HOST/PORT."
    )
    token_file: str = str(SERVICE_ACCOUNT / "token")
    ca_file: str | None = str(SERVICE_ACCOUNT / "ca.crt")

    def resolved_api_server(self) -> str:
        if self.api_server:
            return self.api_server.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("no api_server set and KUBERNETES_SERVICE_HOST is empty: not running in a cluster?")
        return f"https://{host}:{port}"

    def status_url(self) -> str:
        return (
            f"{self.resolved_api_server()}/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}"
            f"/{self.plural}/{self.name}/status"
        )

    def tls_verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify`: the cluster's CA when mounted, else the system's (httpx 0.28 deprecates a path here)."""
        if self.ca_file and Path(self.ca_file).exists():
            return ssl.create_default_context(cafile=self.ca_file)
        return True

    def merge_patch_headers(self, user_agent: str) -> dict[str, str]:
        """Headers of a merge patch; the token is re-read every time: projected tokens rotate."""
        headers = {"Content-Type": MERGE_PATCH, "User-Agent": user_agent}
        token_path = Path(self.token_file)
        if token_path.exists():
            headers["Authorization"] = f"Bearer {token_path.read_text().strip()}"
        return headers
