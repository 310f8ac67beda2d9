"""Where the API server is and how to authenticate, as the official `kubernetes` package's loaders find them.

In-cluster service account, else `$KUBECONFIG` / ~/.kube/config (exec plugins
and client certificates included), read once at startup; a refreshable token
is re-read now and then, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

_TOKEN_REFRESH_S = 30.0  # how often a refreshable token (exec plugin, projected service-account token) is re-read


def _bearer(configuration: Any) -> str | None:
    """The Authorization header value the kubernetes package would send (runs its refresh hook)."""
    for key in ("BearerToken", "authorization"):  # newer clients, older clients
        value = configuration.get_api_key_with_prefix(key)
        if value:
            return value
    if configuration.username and configuration.password:
        return configuration.get_basic_auth_token()
    return None


@dataclass
class Credentials:
    """Where the API server is and how to authenticate, as the kubernetes package's loaders found them."""

    host: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]
    server_hostname: str | None = None
    configuration: Any = None  # kept when its token must be refreshed (exec plugins, projected tokens)
    _refreshed_at: float = field(default=0.0, repr=False)

    @classmethod
    def from_environment(cls) -> Credentials:
        """In-cluster service account if present, else the kubeconfig (`$KUBECONFIG`, read now, not at import)."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
        return cls.from_configuration(configuration)

    @classmethod
    def from_configuration(cls, configuration: Any) -> Credentials:
        context: ssl.SSLContext | bool = False
        if configuration.host.startswith("https://"):
            if configuration.verify_ssl:
                context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        token = _bearer(configuration)
        return cls(
            host=configuration.host.rstrip("/"),
            ssl=context,
            headers={"Authorization": token} if token else {},
            server_hostname=getattr(configuration, "tls_server_name", None) or None,
            configuration=configuration if getattr(configuration, "refresh_api_key_hook", None) else None,
            _refreshed_at=time.monotonic(),
        )

    async def auth_headers(self) -> dict[str, str]:
        if self.configuration is not None and time.monotonic() - self._refreshed_at > _TOKEN_REFRESH_S:
            self._refreshed_at = time.monotonic()
            # The hook may run an exec plugin or read a file: keep it off the event loop.
            token = await asyncio.to_thread(_bearer, self.configuration)
            self.headers = {"Authorization": token} if token else {}
        return self.headers
