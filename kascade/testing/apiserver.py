"""A strict Kubernetes API-server stand-in, on kmock, for operator tests and manual use.

    with StandinApiServer(crd_paths=["crds/"]) as server:
        server.url               # http://127.0.0.1:PORT
        server.kubeconfig_path   # a kubeconfig for kubectl, kopf and the kubernetes client
        server.requests          # every request: method, path, query, body, user agent, verb, status
        server.hold_unready("default", "my-deploy")
        server.objects("deployments", namespace="default")

It runs in a background thread with its own event loop, so synchronous tests,
`kopf.testing.KopfRunner` and the real kubectl binary can all talk to it. From
a shell:

    python -m kascade.testing.apiserver --port 8001 --crds crds/

What it refuses, sets and runs is listed in kascade/testing/__init__.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.web
import yaml

from kascade.testing import errors
from kascade.testing.controllers import (
    CrdController,
    DeploymentController,
    GarbageCollector,
)
from kascade.testing.handler import StandinHandler
from kascade.testing.kinds import CRD_KIND, Kind, KindRegistry
from kascade.testing.recording import RecordedRequest
from kascade.testing.selectors import parse_label_selector
from kascade.testing.store import Store
from kascade.testing.watches import Change

T = TypeVar("T")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_START_TIMEOUT_S = 30.0


def load_crds(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """CustomResourceDefinitions from YAML files or folders of them (other documents are skipped)."""
    crds = []
    for path in map(Path, paths):
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")) if path.is_dir() else [path]
        if not files and path.is_dir():
            raise FileNotFoundError(f"{path} holds no .yaml/.yml/.json files")
        for file in files:
            for document in yaml.safe_load_all(file.read_text()):
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                    crds.append(document)
    return crds


def write_kubeconfig(path: Path, url: str, *, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kascade-standin", "cluster": {"server": url}}],
        "users": [{"name": "kascade-standin", "user": {"token": "kascade-standin-token"}}],
        "contexts": [
            {
                "name": "kascade-standin",
                "context": {"cluster": "kascade-standin", "user": "kascade-standin", "namespace": namespace},
            }
        ],
        "current-context": "kascade-standin",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class StandinApiServer:
    """A strict API-server stand-in on a loopback port, in a background thread."""

    def __init__(
        self,
        crd_paths: Sequence[str | Path] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        kubeconfig_path: str | Path | None = None,
        controller_delay: float = 0.05,
        history_limit: int = 10_000,
    ):
        self._crds = load_crds(crd_paths)
        self._host, self._requested_port = host, port
        self._namespaces = tuple(namespaces)
        self._kubeconfig_path = Path(kubeconfig_path) if kubeconfig_path else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.store = Store(KindRegistry(), history_limit=history_limit)
        self.deployments = DeploymentController(self.store, delay=controller_delay)
        self.garbage_collector = GarbageCollector(self.store)
        self.crd_controller = CrdController(self.store)
        self.store.observers += [self.crd_controller.observe, self.deployments.observe, self.garbage_collector.observe]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self.handler: StandinHandler | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the stand-in API server is already started")
        self._thread = threading.Thread(target=self._run, name="kascade-standin-apiserver", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise RuntimeError(f"the stand-in API server did not start within {_START_TIMEOUT_S} s")
        if self._startup_error is not None:
            self._thread.join()
            raise RuntimeError(
                f"the stand-in API server failed to start: {self._startup_error}"
            ) from self._startup_error
        if self._kubeconfig_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="kascade-standin-")
            self._kubeconfig_path = Path(self._tmpdir.name) / "kubeconfig"
        write_kubeconfig(self._kubeconfig_path, self.url)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self._thread = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:  # noqa: BLE001 - reported to the starting thread
            if not self._started.is_set():
                self._startup_error = error
                self._started.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        handler = StandinHandler(store=self.store)
        self.handler = handler
        async with handler:
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(handler), handle_signals=False, shutdown_timeout=2.0)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
            try:
                self._port = runner.addresses[0][1]
                self._bootstrap()
                self._started.set()
                await self._stop.wait()
            finally:
                handler.shutdown()
                await asyncio.sleep(0)
                await runner.cleanup()

    def _bootstrap(self) -> None:
        ns_kind = self.store.kinds.get("", "v1", "namespaces")
        assert ns_kind is not None
        for namespace in self._namespaces:
            self.store.create(ns_kind, None, {"metadata": {"name": namespace}})
        for crd in self._crds:
            self.store.create(CRD_KIND, None, crd)

    # --- where it is -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the stand-in API server is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        if self._kubeconfig_path is None:
            raise RuntimeError("the stand-in API server is not started")
        return self._kubeconfig_path

    # --- calling into the server's loop -----------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's event loop (where the store lives) and return its result."""
        if self._loop is None or not self._started.is_set():
            raise RuntimeError("the stand-in API server is not started")
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def _kind(self, resource: str) -> Kind:
        kind = self.call(lambda: self.store.kinds.lookup(resource))
        if kind is None:
            raise KeyError(f"the stand-in serves no resource named {resource!r}")
        return kind

    def _kind_of(self, manifest: dict[str, Any]) -> Kind:
        kind = self.call(lambda: self.store.kinds.by_kind(manifest.get("apiVersion", ""), manifest.get("kind", "")))
        if kind is None:
            raise KeyError(f"the stand-in serves no {manifest.get('apiVersion')} {manifest.get('kind')}")
        return kind

    # --- objects -----------------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create an object in-process, through the same checks as a POST (raises ApiError)."""
        kind = self._kind_of(manifest)
        ns = (namespace or (manifest.get("metadata") or {}).get("namespace") or "default") if kind.namespaced else None
        return copy.deepcopy(self.call(lambda: self.store.create(kind, ns, manifest).obj))

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """One object by resource name (`deployments`, `deploy`, `mc`, `ModelCascade`...), or None."""
        kind = self._kind(resource)
        ns = (namespace or "default") if kind.namespaced else None
        return copy.deepcopy(self.call(lambda: self.store.get(kind, ns, name)))

    def objects(
        self, resource: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """The stored objects of a resource (all namespaces when `namespace` is None)."""
        kind = self._kind(resource)
        labels = parse_label_selector(label_selector)
        return copy.deepcopy(self.call(lambda: self.store.list_objects(kind, namespace, labels)))

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Patch in-process (merge, json, strategic or apply), e.g. to play another controller's part."""
        kind = self._kind(resource)
        ns = (namespace or "default") if kind.namespaced else None
        return copy.deepcopy(
            self.call(
                lambda: (
                    self.store.patch(
                        kind, ns, name, patch_type, patch, subresource=subresource, field_manager="kascade-standin"
                    ).obj
                )
            )
        )

    def delete(self, resource: str, name: str, *, namespace: str | None = None, propagation: str | None = None) -> None:
        kind = self._kind(resource)
        ns = (namespace or "default") if kind.namespaced else None
        self.call(lambda: self.store.delete(kind, ns, name, propagation=propagation))

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        ready: bool = True,
    ) -> dict[str, Any]:
        """Register a Node (e.g. a GPU node: labels `nvidia.com/gpu.product`, capacity `nvidia.com/gpu`)."""
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", **(capacity or {})}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **(labels or {}),
                },
            },
            "spec": {"taints": taints} if taints else {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "KubeletReady" if ready else "KubeletNotReady",
                    }
                ],
                "nodeInfo": {"kubeletVersion": "v1.37.1", "architecture": "amd64", "operatingSystem": "linux"},
            },
        }
        return self.create(node)

    # --- controllers ---------------------------------------------------------------------------------

    def hold_unready(
        self, namespace: str, name: str, *, ready_replicas: int = 0, deadline_exceeded: bool = False
    ) -> None:
        """Keep Deployment `namespace/name` unready (it may not exist yet); optionally past its progress deadline."""
        self.call(
            lambda: self.deployments.hold_unready(
                namespace, name, ready_replicas=ready_replicas, deadline_exceeded=deadline_exceeded
            )
        )

    def release(self, namespace: str, name: str) -> None:
        """Let a held Deployment become ready."""
        self.call(lambda: self.deployments.release(namespace, name))

    def compact(self) -> None:
        """Forget the watch history (etcd compaction): watches from older resourceVersions get 410 Gone."""
        self.call(self.store.compact)

    @property
    def resource_version(self) -> int:
        """The current (global) resourceVersion, e.g. to look at what changed after it with `changes`."""
        return self.call(lambda: self.store.resource_version)

    def changes(self, *, since: int = 0) -> list[Change]:
        """Every committed change (what watches see: type, kind, old and new object) after resourceVersion `since`."""
        return self.call(lambda: self.store.changes_since(since))

    # --- the request log ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        return self.call(lambda: list(self.handler.recorded if self.handler else []))

    def writes(self, *, since: int = 0) -> list[RecordedRequest]:
        """Requests that would change something (create, update, patch, delete), from index `since` on."""
        return [request for request in self.requests[since:] if request.is_write]

    def mark(self) -> int:
        """An index into `requests`, to look at what came after it: `server.writes(since=mark)`."""
        return len(self.requests)

    def wait_for(self, condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02) -> T:
        """Poll `condition` until it returns something truthy; raise TimeoutError with the last value otherwise."""
        deadline = time.monotonic() + timeout
        value = condition()
        while not value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s (last value: {value!r})")
            time.sleep(interval)
            value = condition()
        return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kascade.testing.apiserver",
        description="Serve a strict Kubernetes API-server stand-in (for kubectl, kopf and the kubernetes client).",
    )
    parser.add_argument("--port", type=int, default=8001, help="port on the host (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--crds", action="append", default=[], help="a CRD file or a folder of them (repeatable)")
    parser.add_argument("--kubeconfig", type=Path, help="where to write the kubeconfig (default: a temporary file)")
    parser.add_argument(
        "--controller-delay", type=float, default=0.05, help="seconds before a Deployment's status fills"
    )
    args = parser.parse_args(argv)
    try:
        server = StandinApiServer(
            args.crds,
            host=args.host,
            port=args.port,
            kubeconfig_path=args.kubeconfig,
            controller_delay=args.controller_delay,
        )
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"cannot load the CRDs: {error}")
    try:
        server.start()
    except RuntimeError as error:
        print(f"error: {error}")
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"Kubernetes API stand-in serving at {server.url}", flush=True)
    print(f"kubeconfig: {server.kubeconfig_path}", flush=True)
    print(f"  export KUBECONFIG={server.kubeconfig_path}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()
    return 0


__all__ = ["RecordedRequest", "StandinApiServer", "errors", "load_crds", "main", "write_kubeconfig"]

if __name__ == "__main__":
    raise SystemExit(main())
