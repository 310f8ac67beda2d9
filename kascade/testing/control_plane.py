"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.

The binaries come from `scripts/build-control-plane.sh` (built once from the Go
module proxy, cached under ~/.cache/kascade/control-plane/). `ControlPlane`
starts them as processes of this machine, as a kubeadm cluster runs them:

- etcd with its data in a temporary folder;
- the API server with client-certificate and ServiceAccount-token
  authentication, `Node,RBAC` authorization and its default admission plugins
  (PodSecurity, ServiceAccount, LimitRanger, ResourceQuota, … as released);
- the controller manager with one ServiceAccount per controller (as kubeadm
  sets it: garbage collection, Deployments, ReplicaSets, Jobs and the rest run
  with their own RBAC), signing ServiceAccount tokens with the same key;
- the scheduler, binding pods to nodes by their requests, selectors and taints;
- kwok, which plays the kubelet of every node annotated `kwok.x-k8s.io/node:
  fake`: it marks such nodes Ready, and moves their pods to Running and Ready
  (and deletes them when asked). Pods of Jobs are left Running: a test plays
  their end, as a kubelet would report it.

Nothing leaves loopback: pod and Service addresses are only numbers in the API
(kwok hands out pod IPs from a range nobody routes to). `kubeconfig_for_token`
gives a kubeconfig for a ServiceAccount token from the TokenRequest API, so a
process authenticates as that ServiceAccount and RBAC is what the API server
enforces.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kascade.runtime.serving import free_port
from kascade.testing.kubetools import kubectl_path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-control-plane.sh"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# What kwok plays: nodes come up Ready and keep a lease; pods become Ready; deleted pods go. Not
# pod-complete: a Job's pod stays Running until the test reports how it ended.
KWOK_STAGES = ("node-initialize.yaml", "node-heartbeat-with-lease.yaml", "pod-ready.yaml", "pod-delete.yaml")
SERVICE_CIDR = "10.96.0.0/16"  # allocated, never dialled
POD_CIDR = "10.244.0.0/16"
_START_TIMEOUT_S = 120.0


class ControlPlaneUnavailable(RuntimeError):
    """The binaries could not be built or a component would not start; the message says why."""


def build_control_plane(*, timeout: float = 3600.0) -> Path:
    """Run scripts/build-control-plane.sh (a no-op once cached) and return the folder of the binaries."""
    if shutil.which("go") is None and not _cached_bin_dir():
        raise ControlPlaneUnavailable(
            f"the control plane is not built and Go is not installed: install Go >= 1.26 and run {BUILD_SCRIPT}"
        )
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise ControlPlaneUnavailable(f"{BUILD_SCRIPT} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _cached_bin_dir() -> Path | None:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kascade" / "control-plane"
    found = sorted(p for p in base.glob("kubernetes-*") if p.is_dir() and not p.name.endswith(".partial"))
    return found[-1] if found else None


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    cert: Path
    key: Path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    signer: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [x509.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [x509.ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class _Pki:
    ca: _Pair
    serving: _Pair
    admin: _Pair
    service_account_key: Path
    service_account_public: Path

    @classmethod
    def create(cls, folder: Path) -> _Pki:
        folder.mkdir(parents=True, exist_ok=True)

        def key() -> rsa.RSAPrivateKey:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def pem(cert: x509.Certificate) -> bytes:
            return cert.public_bytes(serialization.Encoding.PEM)

        ca_key, ca_name = key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kascade-test-ca")])
        ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
        pairs = {}
        kubernetes_service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        for name, subject, options in (
            (
                "apiserver",
                [x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")],
                {
                    "server_names": (
                        "localhost",
                        "kubernetes",
                        "kubernetes.default",
                        "kubernetes.default.svc",
                        "kubernetes.default.svc.cluster.local",
                    ),
                    "server_ips": ("127.0.0.1", kubernetes_service_ip),
                },
            ),
            (
                "admin",
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "kascade-test-admin"),
                ],
                {"client": True},
            ),
        ):
            private = key()
            cert = _certificate(x509.Name(subject), private, ca_name, ca_key, **options)
            pairs[name] = _Pair(folder / f"{name}.crt", folder / f"{name}.key")
            pairs[name].cert.write_bytes(pem(cert))
            _write_key(pairs[name].key, private)
        ca = _Pair(folder / "ca.crt", folder / "ca.key")
        ca.cert.write_bytes(pem(ca_cert))
        _write_key(ca.key, ca_key)
        signing = key()
        _write_key(folder / "sa.key", signing)
        (folder / "sa.pub").write_bytes(
            signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return cls(ca, pairs["apiserver"], pairs["admin"], folder / "sa.key", folder / "sa.pub")


# --- the processes ---------------------------------------------------------------------------


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    """`with ControlPlane(folder) as cluster:` a real control plane on loopback; `cluster.kubeconfig` is admin's."""

    folder: Path
    bin_dir: Path | None = None
    components: list[_Component] = field(default_factory=list)
    api_port: int = 0

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.folder / "pki" / "ca.crt"

    def start(self) -> None:
        self.bin_dir = self.bin_dir or build_control_plane()
        self.folder.mkdir(parents=True, exist_ok=True)
        pki = _Pki.create(self.folder / "pki")
        etcd_port, etcd_peer, self.api_port = free_port(), free_port(), free_port()
        self._write_kubeconfig(
            self.kubeconfig, {"client-certificate": str(pki.admin.cert), "client-key": str(pki.admin.key)}
        )
        self._start(
            "etcd",
            [
                "--data-dir",
                str(self.folder / "etcd"),
                "--name",
                "kascade-test",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"kascade-test=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # a throw-away store: durability buys nothing, fsync costs seconds on slow disks
                "--log-level",
                "warn",
            ],
        )
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), "etcd")
        self._start(
            "kube-apiserver",
            [
                "--etcd-servers",
                f"http://127.0.0.1:{etcd_port}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.api_port),
                "--cert-dir",
                str(self.folder / "apiserver-certs"),
                "--tls-cert-file",
                str(pki.serving.cert),
                "--tls-private-key-file",
                str(pki.serving.key),
                "--client-ca-file",
                str(pki.ca.cert),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(pki.service_account_public),
                "--service-account-signing-key-file",
                str(pki.service_account_key),
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",  # on top of the defaults (PodSecurity among them)
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--endpoint-reconciler-type",
                "none",  # its endpoints would have to be a routable address
                "--allow-privileged=false",
                "--profiling=false",
            ],
        )
        self._wait(self._api_ready, "the API server's /readyz")
        common = ["--kubeconfig", str(self.kubeconfig), "--leader-elect=false", "--bind-address", "127.0.0.1"]
        self._start(
            "kube-controller-manager",
            [
                *common,
                "--secure-port",
                str(free_port()),
                "--use-service-account-credentials=true",
                "--service-account-private-key-file",
                str(pki.service_account_key),
                "--root-ca-file",
                str(pki.ca.cert),
                "--cluster-signing-cert-file",
                str(pki.ca.cert),
                "--cluster-signing-key-file",
                str(pki.ca.key),
                "--controllers",
                "*",
            ],
        )
        self._start("kube-scheduler", [*common, "--secure-port", str(free_port())])
        stages = self.bin_dir / "kwok-stages"
        configs = [arg for stage in KWOK_STAGES for arg in ("--config", str(stages / stage))]
        self._start(
            "kwok",
            [
                "--kubeconfig",
                str(self.kubeconfig),
                *configs,
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--cidr",
                POD_CIDR,
                "--node-ip",
                "10.244.255.254",
                "--server-address",
                f"127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds",
                "40",
            ],
        )
        # The default namespace's ServiceAccount exists once the controller manager runs its controllers.
        self._wait(
            lambda: self.get("serviceaccounts", "default", namespace="default") is not None,
            "the controller manager (the default ServiceAccount)",
        )

    def stop(self) -> None:
        """Stop the components in the reverse order of their start, each before the next (etcd last)."""
        for component in reversed(self.components):
            if component.process.poll() is None:
                component.process.send_signal(signal.SIGTERM)
            try:
                component.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait(timeout=5)
        self.components.clear()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(component.tail(lines) for component in self.components)

    def _start(self, name: str, args: list[str]) -> None:
        assert self.bin_dir is not None
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
            )
        self.components.append(_Component(name, process, log))

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not ready():
            for component in self.components:
                if component.process.poll() is not None:
                    raise ControlPlaneUnavailable(
                        f"{component.name} exited with {component.process.returncode} "
                        f"while waiting for {what}\n{component.tail()}"
                    )
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def _api_ready(self) -> bool:
        try:
            return self.client().get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # --- clients ---

    def _write_kubeconfig(self, path: Path, user: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kascade-test",
            "clusters": [
                {"name": "kascade-test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": "kascade-test-user", "user": user}],
            "contexts": [{"name": "kascade-test", "context": {"cluster": "kascade-test", "user": "kascade-test-user"}}],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of the API server: admin's client certificate, or `token`'s identity."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        headers = {}
        if token is None:
            pki = self.folder / "pki"
            context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        else:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, verify=context, headers=headers, timeout=30)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [
                str(kubectl_path()),
                "--kubeconfig",
                str(kubeconfig or self.kubeconfig),
                "--cache-dir",
                str(self.folder / "kube-cache"),
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def token_for(self, service_account: str, namespace: str, *, seconds: int = 3600) -> str:
        """A token of `service_account` from the TokenRequest API (what `kubectl create token` asks for)."""
        with self.client() as client:
            response = client.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": seconds},
                },
            )
        response.raise_for_status()
        return str(response.json()["status"]["token"])

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        self._write_kubeconfig(path, {"token": token})
        return path

    # --- reading and writing objects (admin) ---

    def get(self, resource: str, name: str, *, namespace: str | None = None, group: str = "") -> dict[str, Any] | None:
        with self.client() as client:
            response = client.get(_path(resource, name=name, namespace=namespace, group=group))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def list(
        self, resource: str, *, namespace: str | None = None, group: str = "", label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        with self.client() as client:
            response = client.get(_path(resource, namespace=namespace, group=group), params=params)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return list(response.json()["items"])

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        taints: Sequence[dict[str, str]] | None = None,
    ) -> None:
        """A node kwok plays (Ready within a second), offering `capacity` on top of CPU, memory and pods."""
        resources = {"cpu": "64", "memory": "512Gi", "pods": "110", **(capacity or {})}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **(labels or {}),
                },
            },
            "spec": {"taints": [*(taints or ())]},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                    "containerRuntimeVersion": "fake",
                    "kernelVersion": "",
                    "osImage": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        }
        with self.client() as client:
            client.post("/api/v1/nodes", json=node).raise_for_status()

    def delete_node(self, name: str) -> None:
        with self.client() as client:
            response = client.delete(f"/api/v1/nodes/{name}")
        if response.status_code != 404:
            response.raise_for_status()

    def set_pod_phase(self, name: str, namespace: str, phase: str, *, exit_code: int = 0) -> None:
        """Report a pod's end as its kubelet would: phase, the containers terminated with `exit_code`."""
        pod = self.get("pods", name, namespace=namespace)
        assert pod is not None, f"pod {namespace}/{name} is gone"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": now,
            "finishedAt": now,
        }
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
            for c in pod["spec"]["containers"]
        ]
        conditions = [
            {"type": t, "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
            for t in ("Ready", "ContainersReady")
        ]
        patch = {"status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions}}
        with self.client() as client:
            response = client.patch(
                f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                content=json.dumps(patch),
                headers={"Content-Type": "application/strategic-merge-patch+json"},
            )
        response.raise_for_status()


def _path(resource: str, *, name: str | None = None, namespace: str | None = None, group: str = "") -> str:
    """The REST path of a resource: `group` is "apps/v1", "kascade.dev/v1alpha1", … or "" for core v1."""
    base = f"/apis/{group}" if group else "/api/v1"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{resource}"
    return f"{base}/{name}" if name else base


def _http_ok(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


def decode_token_subject(token: str) -> str:
    """The `sub` claim of a ServiceAccount token (system:serviceaccount:NAMESPACE:NAME), for messages."""
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])
