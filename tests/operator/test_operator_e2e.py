"""End to end: the real operator process, the API-server stand-in, the real kubectl, real routers.

One cluster serves the module: `kubectl apply -f crds/`, a namespace, GPU nodes and the
Secrets the example needs; `kascade operator --namespace llm --standalone` as a subprocess.
Every test applies the example (`examples/chat-vllm-gpu.yaml`) under a name of its own and
deletes it when it ends, so each passes alone and in any order; a test that restarts the
operator or holds a Deployment back puts them as they were. The scenarios, as a user drives them:

- the children appear with GPU requests, node selectors and tolerations; every stored child
  passes `kubernetes-validate --strict`; the stand-in's Deployment controller makes them ready
  and the status turns Ready with observedGeneration;
- `kascade route` processes, their config rendered from the ConfigMap the operator wrote (tiers
  replaced by local fixed-answer upstreams, status reports aimed at the stand-in) take traffic
  from the official openai client; their counters show in the status and in `kubectl get
  modelcascades`; a router restarts (new process id) and a router pod goes away mid-traffic:
  the totals never go down and end equal to what the clients got answered;
- a reconcile with nothing to do writes nothing, and neither does an operator restart;
  GPU-hours grow with the ready GPUs, and an operator restart carries them over;
- a spec change replaces only the children it changes; the timer corrects drift;
- a missing Secret sets Degraded with a clear message and leaves the children untouched; a GPU
  type no node offers yet is applied, TiersReady says the tier waits for such a node, and the
  node's arrival brings Ready with no edit;
- online calibration: shadow samples move the threshold, `Calibrated` turns True and a running
  router takes the new threshold without a restart;
- deleting the cascade removes the children; every API call the operator made is covered by the
  RBAC rules documented in docs/operator.md (after every test, for the calls it caused) and by
  the Helm chart's Roles.

Timers are short (KASCADE_RECONCILE_INTERVAL_SECONDS=0.5; routers report every 0.3 s).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("kopf")
pytest.importorskip("kmock")
openai = pytest.importorskip("openai")

from kascade.operator.labels import COMPONENT_ROUTER, selector_labels
from kascade.operator.permissions import OPERATOR_RULES, rule_allows
from kascade.runtime.config import RouterConfig
from kascade.runtime.serving import BackgroundServer, free_port
from kascade.testing import StandinApiServer
from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app
from kascade.testing.operator_cluster import OPERATOR_AGENTS, Cluster, manifests, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "chat-vllm-gpu.yaml"
NS = "llm"
CLIENT_KEY = "e2e-client-key"
INTERVAL_S = 0.5

CHILD_RESOURCES = ("serviceaccounts", "roles", "rolebindings", "configmaps", "services", "deployments")


# --- the cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e-operator")
    with StandinApiServer(controller_delay=0.2) as server:
        running = Cluster(server=server, tmp=tmp, namespace=NS, child_resources=CHILD_RESOURCES)
        running.kubectl("apply", "-f", str(REPO / "crds"))
        wait_for(lambda: server.get("customresourcedefinitions", "modelcascades.kascade.dev"), what="the CRD")
        wait_for(
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (server.get("crd", "modelcascades.kascade.dev") or {}).get("status", {}).get("conditions", [])
            ),
            what="the CRD to be established",
        )
        server.add_node("gpu-l4-1", labels={"nvidia.com/gpu.product": "NVIDIA-L4"}, capacity={"nvidia.com/gpu": "8"})
        server.add_node(
            "gpu-h100-1", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, capacity={"nvidia.com/gpu": "8"}
        )
        running.kubectl(
            "apply",
            "-f",
            "-",
            input=manifests(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                hf_token_secret(),
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "chat-client-keys", "namespace": NS},
                    "stringData": {"keys": f"{CLIENT_KEY}\n"},
                },
            ),
        )
        running.start_operator()
        try:
            yield running
        finally:
            running.stop_operator()


def hf_token_secret(name: str = "hf-token") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"token": "hf_e2e"},
    }


@pytest.fixture
def chat(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's cluster, looking at this test's own cascade: the example under a name of its own.

    When the test ends the cascade is deleted, its children are gone, and every call the operator made meanwhile
    is allowed by its documented rules.
    """
    cluster.name = "chat-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    mark = cluster.server.mark()
    yield cluster
    cluster.kubectl("delete", "modelcascade", cluster.name, "-n", NS, "--ignore-not-found", "--timeout=30s")
    wait_for(lambda: not cluster.children(), what=f"the children of {cluster.name} to be garbage-collected")
    for pod in cluster.server.objects("pods", NS, label_selector=f"kascade.dev/cascade={cluster.name}"):
        cluster.server.delete("pods", pod["metadata"]["name"], namespace=NS)
    assert calls_outside_the_rules(cluster.server.requests[mark:]) == []


def example(name: str) -> dict[str, Any]:
    """The example's manifest, named `name`."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["name"] = name
    return document


def apply_example(cluster: Cluster, document: dict[str, Any] | None = None) -> None:
    """`kubectl apply` of the example (or `document`) as the test's cascade."""
    cluster.kubectl("apply", "-f", "-", input=manifests(document or example(cluster.name)))


def ready_example(cluster: Cluster, document: dict[str, Any] | None = None) -> None:
    """The example (or `document`) applied, Ready for its generation and not Degraded."""
    apply_example(cluster, document)
    wait_for(
        lambda: (
            cluster.condition("Ready").get("status") == "True"
            and cluster.condition("Ready").get("observedGeneration") == cluster.cascade()["metadata"]["generation"]
            and cluster.condition("Degraded").get("status") == "False"
        ),
        what="Ready and not Degraded",
        context=lambda: f"{cluster.status()}\n{cluster.log_tail()}",
    )


def calls_outside_the_rules(requests: list[Any]) -> list[tuple[str, str, str]]:
    """The operator's calls among `requests` that its documented RBAC rules do not allow."""
    calls = {
        (r.verb, r.group or "", r.resource if r.subresource is None else f"{r.resource}/{r.subresource}")
        for r in requests
        if r.user_agent.startswith(OPERATOR_AGENTS) and r.resource is not None
    }
    return sorted(
        call for call in calls if not rule_allows(OPERATOR_RULES, verb=call[0], group=call[1], resource=call[2])
    )


# --- apply the example ----------------------------------------------------------------------


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_kubectl_apply_creates_the_children_with_gpu_requests(chat: Cluster):
    """The example's tiers become Deployments asking for nvidia.com/gpu on nodes of the right GPU product."""
    cluster, name = chat, chat.name
    apply_example(cluster)
    expected = {("deployments", f"{name}-{c}") for c in ("small", "large", "router")}
    expected |= {("services", f"{name}-{c}") for c in ("small", "large", "router", "router-metrics")}
    expected |= {(r, f"{name}-router") for r in ("serviceaccounts", "roles", "rolebindings", "configmaps")}
    expected |= {(r, f"{name}-distill") for r in ("serviceaccounts", "roles", "rolebindings")}  # the runs' identity
    wait_for(lambda: expected <= set(cluster.children()), what="the children", context=cluster.log_tail)
    children = cluster.children()
    assert set(children) == expected

    small, large = children[("deployments", f"{name}-small")], children[("deployments", f"{name}-large")]
    assert container(small)["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container(large)["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert small["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert large["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert gpu_taint in small["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"} in (
        small["spec"]["template"]["spec"]["tolerations"]
    )
    assert gpu_taint in large["spec"]["template"]["spec"]["tolerations"]
    assert small["spec"]["replicas"] == 2 and large["spec"]["replicas"] == 1
    hf_token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert hf_token in container(large)["env"]

    owner = cluster.cascade()["metadata"]
    for key, child in children.items():
        refs = child["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("ModelCascade", name, owner["uid"], True)
        ], key


def test_every_stored_child_passes_kubernetes_validate_strict(chat: Cluster, tmp_path: Path):
    """The children as the API server stored them (defaults and server metadata included) pass the real schemas."""
    cluster = chat
    ready_example(cluster)
    files = []
    for (resource, name), obj in sorted(cluster.children().items()):
        path = tmp_path / f"{resource}-{name}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        files.append(str(path))
    tool = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run(
        [str(tool), "--strict", "--kubernetes-version", "1.37.0", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("INFO") == len(files), done.stdout


def test_the_status_turns_ready_with_observed_generation(chat: Cluster):
    """Once the Deployments are ready, Ready=True for the cascade's current generation, and the endpoint is set."""
    cluster = chat
    apply_example(cluster)
    wait_for(
        lambda: (
            cluster.condition("Ready").get("status") == "True"
            and cluster.condition("Degraded").get("status") == "False"
        ),
        what="Ready and not Degraded",
        context=lambda: f"{cluster.status()}\n{cluster.log_tail()}",
    )
    status, generation = cluster.status(), cluster.cascade()["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    assert {c["type"]: (c["status"], c["observedGeneration"]) for c in status["conditions"]} == {
        "Ready": ("True", generation),
        "TiersReady": ("True", generation),
        "RouterReady": ("True", generation),
        "Degraded": ("False", generation),
        "Calibrated": ("False", generation),  # the example calibrates online: collecting samples
    }
    assert status["endpoint"] == f"http://{cluster.name}-router.llm.svc:8000/v1"
    assert [(t["name"], t["readyReplicas"], t["replicas"]) for t in status["tiers"]] == [
        ("small", 2, 2),
        ("large", 1, 1),
    ]
    assert status["summary"]["tiers"] == "2/2"
    ready_event = wait_for(
        lambda: next(
            (
                e
                for e in cluster.server.objects("events", NS)
                if e.get("reason") == "Ready" and e["involvedObject"]["name"] == cluster.name
            ),
            None,
        ),
        what="the Ready event",
    )
    assert ready_event["type"] == "Normal" and ready_event["involvedObject"]["name"] == cluster.name


# --- routers and their counters ----------------------------------------------------------------


class RouterProcess:
    """A real `kascade route` process, as a router pod runs it: its own process, so its own processId."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kascade",
                "route",
                "--config",
                str(config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"kascade route exited: {log_path.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"kascade route did not start: {log_path.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as the kubelet sends: uvicorn shuts down and the router reports one last time."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self._log.close()


@dataclass
class Router:
    pod: str
    server: RouterProcess
    client: Any  # openai.OpenAI on the router's URL
    inflight: int = 0


@dataclass
class Traffic:
    """Local tiers, router processes and a client that counts what it got answered."""

    cluster: Cluster
    tmp: Path
    small: FixedBehaviour = field(default_factory=lambda: FixedBehaviour(model="qwen2.5-7b-instruct"))
    large: FixedBehaviour = field(default_factory=lambda: FixedBehaviour(model="llama-3.1-70b-instruct"))
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    routers: dict[str, Router] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0
    escalated: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    one_at_a_time: threading.Lock = field(default_factory=threading.Lock)

    def start_tiers(self) -> None:
        self.small_url = self.stack.enter_context(BackgroundServer(create_fixed_upstream_app(self.small))).url + "/v1"
        self.large_url = self.stack.enter_context(BackgroundServer(create_fixed_upstream_app(self.large))).url + "/v1"

    def router_config(self, pod: str) -> RouterConfig:
        """The ConfigMap's config with the tiers on loopback and status reports going to the stand-in."""
        configmap = self.cluster.server.get("configmaps", f"{self.cluster.name}-router", NS)
        assert configmap is not None
        config = RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))
        assert config.status_report is not None and config.status_report.interval_seconds == 0.3
        urls = {"small": self.small_url, "large": self.large_url}
        keys = self.tmp / "client-keys"
        keys.write_text(f"{CLIENT_KEY}\n")
        token = self.tmp / "token"
        token.write_text("e2e-router-token\n")
        report = config.status_report.model_copy(
            update={"api_server": self.cluster.server.url, "token_file": str(token), "ca_file": None}
        )
        tiers = [tier.model_copy(update={"url": urls[tier.name]}) for tier in config.tiers]
        # Each replica a metrics port of its own: on one machine they cannot all take the pods' 9090.
        return config.model_copy(
            update={
                "tiers": tiers,
                "api_keys_file": str(keys),
                "status_report": report,
                "metrics_port": free_port(),
            }
        )

    def start_router(self, pod: str) -> Router:
        if self.cluster.server.get("pods", pod, NS) is None:
            self.cluster.server.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod,
                        "namespace": NS,
                        "labels": selector_labels(self.cluster.name, COMPONENT_ROUTER),
                    },
                    "spec": {
                        "serviceAccountName": f"{self.cluster.name}-router",
                        "containers": [{"name": "router", "image": "ghcr.io/kascade-dev/kascade-runtime:0.1.0"}],
                    },
                }
            )
        config = self.router_config(pod)
        config_path = self.tmp / f"{pod}.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        # The pod name comes the way the Deployment gives it: the downward API's POD_NAME.
        assert config.status_report is not None
        env = {**os.environ, config.status_report.pod_env: pod}
        server = RouterProcess(config_path, env, self.tmp / f"{pod}.{time.monotonic_ns()}.log")
        router = Router(pod, server, openai.OpenAI(base_url=f"{server.url}/v1", api_key=CLIENT_KEY, max_retries=0))
        with self.lock:
            self.routers[pod] = router
        return router

    def stop_router(self, pod: str) -> None:
        """Take the router out of rotation, let its in-flight requests finish, stop it (it reports one last time)."""
        with self.lock:
            router = self.routers.pop(pod)
            self.lock.wait_for(lambda: router.inflight == 0, timeout=10)
        router.client.close()
        router.server.stop()

    def ask(self, router: Router, *, confident: bool) -> None:
        """One chat completion through `router` (already counted in flight); checks who answered."""
        try:
            with self.one_at_a_time:  # the small tier's confidence is set per request
                self.small.token_prob = 0.9 if confident else 0.2
                raw = router.client.with_raw_response.chat.completions.create(
                    model=self.cluster.name, messages=[{"role": "user", "content": "hello"}]
                )
                answer = raw.parse()
                escalated = raw.headers.get("x-kascade-escalated") == "true"
            assert answer.choices[0].message.content == "Hello, world."
            assert escalated is not confident
        finally:
            with self.lock:
                router.inflight -= 1
                self.lock.notify_all()
        with self.lock:
            self.answered += 1
            self.escalated += int(escalated)

    def send(self, count: int, *, pods: list[str] | None = None) -> None:
        """`count` requests, spread over the routers in rotation (or `pods`); every fourth one escalates."""
        for _ in range(count):
            with self.lock:
                live = sorted(pods or self.routers)
                router = self.routers[live[self.sent % len(live)]]
                confident = self.sent % 4 != 3
                self.sent += 1
                router.inflight += 1
            self.ask(router, confident=confident)

    def close(self) -> None:
        for pod in list(self.routers):
            self.stop_router(pod)
        self.stack.close()

    def pod(self, suffix: str) -> str:
        """A router pod's name, as the cascade's router Deployment names them."""
        return f"{self.cluster.name}-router-{suffix}"


@pytest.fixture
def traffic(chat: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """Local tiers for the test's cascade, and its router processes (stopped when the test ends)."""
    running = Traffic(cluster=chat, tmp=tmp_path_factory.mktemp("e2e-routers"))
    running.start_tiers()
    try:
        yield running
    finally:
        running.close()


def kubectl_table(cluster: Cluster) -> dict[str, str]:
    lines = cluster.kubectl("get", "modelcascades", "-n", NS).splitlines()
    header, row = (re.split(r"\s{2,}", line.strip()) for line in lines[:2])
    return dict(zip(header, row, strict=True))


def two_routers_take_traffic(cluster: Cluster, traffic: Traffic) -> None:
    """The example Ready; routers A and B answer 40 requests, a quarter of them escalated; the status counts them."""
    ready_example(cluster)
    traffic.start_router(traffic.pod("7d9f-a"))
    traffic.start_router(traffic.pod("7d9f-b"))
    traffic.send(40)
    wait_for(
        lambda: cluster.status().get("traffic", {}).get("requests") == 40,
        what="40 requests in the status",
        context=lambda: str(cluster.status().get("traffic")) + "\n" + cluster.log_tail(),
    )


def test_router_counters_fold_into_the_status_and_kubectl_shows_them(chat: Cluster, traffic: Traffic):
    """Two routers take traffic from the openai client; the operator folds their slots into traffic and cost."""
    cluster = chat
    two_routers_take_traffic(cluster, traffic)
    status = cluster.status()
    assert status["traffic"]["escalations"] == 10
    assert status["traffic"]["answeredBy"] == {"small": 30, "large": 10}
    assert status["cost"]["saved"] > 0 and status["cost"]["currency"] == "USD"
    assert set(status["replicaCounters"]) == {slot["processId"] for slot in status["replicaCounters"].values()}
    assert {slot["pod"] for slot in status["replicaCounters"].values()} == {
        traffic.pod("7d9f-a"),
        traffic.pod("7d9f-b"),
    }

    row = kubectl_table(cluster)
    assert row["NAME"] == cluster.name and row["READY"] == "True" and row["TIERS"] == "2/2"
    assert row["ESCALATION"] == "25.0%" == status["summary"]["escalation"]
    assert row["SAVED"] == status["summary"]["saved"]
    assert re.fullmatch(r"USD [0-9.]+ \([0-9.]+%\)", row["SAVED"]), row["SAVED"]


def test_restarts_and_removed_pods_neither_drop_nor_double_count(chat: Cluster, traffic: Traffic):
    """Router A restarts (a new process id) and pod B goes away while traffic flows: totals only grow, and end exact."""
    cluster = chat
    two_routers_take_traffic(cluster, traffic)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(cluster.status().get("traffic", {}).get("requests", 0))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    flowing = threading.Event()
    errors: list[BaseException] = []

    def background() -> None:
        try:
            while not flowing.is_set():
                traffic.send(1)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    sender = threading.Thread(target=background, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        # Router A restarts: same pod, new process.
        traffic.stop_router(traffic.pod("7d9f-a"))
        traffic.start_router(traffic.pod("7d9f-a"))
        time.sleep(0.8)
        # Pod B is deleted; its process finishes a few in-flight requests after the operator retired its slot,
        # then stops and writes its slot one last time.
        retired_before = cluster.status().get("retiredCounters", {}).get("processes", 0)
        cluster.server.delete("pods", traffic.pod("7d9f-b"), namespace=NS)
        wait_for(
            lambda: cluster.status().get("retiredCounters", {}).get("processes", 0) > retired_before,
            what="the operator to retire pod B's slot",
            context=cluster.log_tail,
        )
        traffic.send(3, pods=[traffic.pod("7d9f-b")])
        traffic.stop_router(traffic.pod("7d9f-b"))
        time.sleep(0.5)
    finally:
        flowing.set()
        sender.join(timeout=20)
        assert not errors, errors

    wait_for(
        lambda: (
            cluster.status().get("traffic", {}).get("requests") == traffic.answered
            and len(cluster.status().get("replicaCounters") or {}) == 1
        ),
        timeout=20,
        what=f"{traffic.answered} requests folded and one live slot",
        context=lambda: str(cluster.status().get("traffic")) + str(cluster.status().get("retiredCounters")),
    )
    time.sleep(4 * INTERVAL_S)  # more folds: nothing may count twice
    stop.set()
    sampler.join(timeout=5)
    status = cluster.status()
    assert status["traffic"]["requests"] == traffic.answered
    assert status["traffic"]["escalations"] == traffic.escalated
    assert sum(status["traffic"]["answeredBy"].values()) == traffic.answered
    assert status["retiredCounters"]["processes"] == 2  # the first process of A, and B
    assert [slot["pod"] for slot in status["replicaCounters"].values()] == [traffic.pod("7d9f-a")]
    assert all(later >= earlier for earlier, later in itertools.pairwise(seen)), "a cumulative figure went down"
    assert seen[-1] == traffic.answered


# --- no-op reconciles write nothing ------------------------------------------------------------------


def test_a_reconcile_with_nothing_to_change_writes_nothing(chat: Cluster):
    """Timer reconciles of a settled cascade, and an update that changes no child, write nothing to the API."""
    cluster = chat
    ready_example(cluster)
    time.sleep(2 * INTERVAL_S)
    mark = cluster.server.mark()
    time.sleep(8 * INTERVAL_S)
    assert cluster.operator_writes(since=mark) == []
    reconciles = [  # the children come from the operator's watches; each reconcile of the example lists its runs
        r
        for r in cluster.server.requests[mark:]
        if r.user_agent.startswith("kascade-operator/") and r.resource == "distillations"
    ]
    assert len(reconciles) >= 4, "the timer did not reconcile"

    # A label on the cascade is an update that no child depends on: kopf records it, the reconcile writes nothing.
    mark = cluster.server.mark()
    cluster.kubectl("label", "modelcascade", cluster.name, "-n", NS, "team=ml")
    time.sleep(6 * INTERVAL_S)
    writes = cluster.operator_writes(since=mark)
    assert [(w.verb, w.resource, w.subresource) for w in writes] == [("patch", "modelcascades", None)], [
        str(w) for w in writes
    ]
    assert set(writes[0].body["metadata"]) == {"annotations"}  # kopf's last-handled-configuration, nothing else


def test_an_operator_restart_writes_nothing(chat: Cluster):
    """Resuming a settled cascade after the operator restarts changes nothing."""
    cluster = chat
    ready_example(cluster)
    time.sleep(2 * INTERVAL_S)  # settled
    cluster.stop_operator()
    mark = cluster.server.mark()
    cluster.start_operator()
    time.sleep(6 * INTERVAL_S)
    resumed = [r for r in cluster.server.requests[mark:] if r.user_agent.startswith("kascade-operator/")]
    assert resumed, "the operator did not reconcile after the restart"
    assert cluster.operator_writes(since=mark) == []


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def gpu_look(cluster: Cluster, after: str, *, seconds: float = 1) -> dict[str, Any]:
    """The status once the operator has brought the GPU-hours at least `seconds` past `after`."""
    return wait_for(
        lambda: (
            (status := cluster.status())["cost"]["gpuHoursUntil"] > after
            and seconds_between(after, status["cost"]["gpuHoursUntil"]) >= seconds
            and status
        ),
        what=f"GPU-hours counted past {after}",
        context=cluster.log_tail,
    )


def test_reserved_gpu_hours_grow_with_the_ready_gpus_and_survive_an_operator_restart(chat: Cluster):
    """2 L4s at 0.80 and 4 H100s at 3.00 an hour: GPU-hours, written every second, grow at 6 GPUs across a restart."""
    cluster = chat
    ready_example(cluster)
    cluster.stop_operator()
    cluster.start_operator(KASCADE_GPU_HOURS_INTERVAL_SECONDS="1")
    try:
        counted = wait_for(lambda: cluster.status().get("cost", {}).get("gpuHoursUntil"), what="GPU-hours counted")
        first = gpu_look(cluster, counted)
        second = gpu_look(cluster, first["cost"]["gpuHoursUntil"], seconds=2)
        assert [(t["name"], t["readyGpus"]) for t in second["tiers"]] == [("small", 2), ("large", 4)]
        hours = seconds_between(first["cost"]["gpuHoursUntil"], second["cost"]["gpuHoursUntil"]) / 3600
        grown = {key: second["cost"][key] - first["cost"][key] for key in ("gpuHours", "reservationCost")}
        assert grown == {"gpuHours": pytest.approx(6 * hours), "reservationCost": pytest.approx(13.6 * hours)}
        assert second["cost"]["gpuHours"] == pytest.approx(sum(t["gpuHours"] for t in second["tiers"]))

        cluster.stop_operator()  # down for two seconds; the pods keep their GPUs
        left = cluster.status()
        time.sleep(2)
        cluster.start_operator(KASCADE_GPU_HOURS_INTERVAL_SECONDS="1")
        after = gpu_look(cluster, left["cost"]["gpuHoursUntil"], seconds=2)
        hours = seconds_between(left["cost"]["gpuHoursUntil"], after["cost"]["gpuHoursUntil"]) / 3600
        assert after["cost"]["gpuHours"] - left["cost"]["gpuHours"] == pytest.approx(6 * hours)
        assert after["cost"]["gpuHoursSince"] == left["cost"]["gpuHoursSince"]
        shown = cluster.status()["summary"]["reserved"]
        row = kubectl_table(cluster)
        assert row["RESERVED"] in (shown, cluster.status()["summary"]["reserved"])  # written every second
        assert re.fullmatch(r"USD [0-9.,]+ \([0-9.,]+ GPU-h\)", row["RESERVED"]), row["RESERVED"]
    finally:
        cluster.stop_operator()
        cluster.start_operator()


def child_writes(cluster: Cluster, since: int) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (w.verb, w.resource, w.name or ((w.body or {}).get("metadata") or {}).get("name"))
        for w in cluster.operator_writes(since=since)
        if w.resource in CHILD_RESOURCES
    ]


def test_a_spec_change_replaces_only_the_children_it_changes(chat: Cluster):
    """More replicas for the small tier: one PUT of its Deployment; the status follows the new generation."""
    cluster, small = chat, f"{chat.name}-small"
    ready_example(cluster)
    document = example(cluster.name)
    document["spec"]["tiers"][0]["replicas"] = 3
    mark = cluster.server.mark()
    cluster.kubectl("apply", "-f", "-", input=manifests(document))
    generation = cluster.cascade()["metadata"]["generation"]
    wait_for(
        lambda: (
            cluster.status().get("observedGeneration") == generation
            and cluster.status()["tiers"][0]["readyReplicas"] == 3
        ),
        what="3 ready replicas of the small tier",
        context=lambda: str(cluster.status().get("tiers")) + cluster.log_tail(),
    )
    assert cluster.server.get("deployments", small, NS)["spec"]["replicas"] == 3
    assert child_writes(cluster, mark) == [("update", "deployments", small)]
    puts = [w for w in cluster.operator_writes(since=mark) if w.verb == "update"]
    assert puts[0].method == "PUT" and puts[0].body["metadata"]["resourceVersion"]

    mark = cluster.server.mark()
    apply_example(cluster)
    wait_for(lambda: cluster.server.get("deployments", small, NS)["spec"]["replicas"] == 2, what="2 replicas again")
    wait_for(
        lambda: (
            cluster.condition("Degraded").get("status") == "False" and cluster.status()["tiers"][0]["replicas"] == 2
        ),
        what="the status of 2 replicas",
    )
    assert child_writes(cluster, mark) == [("update", "deployments", small)]


def test_the_timer_corrects_drift(chat: Cluster):
    """A deleted child comes back, and a widened router Role is narrowed again, without any change to the cascade."""
    cluster, large, router = chat, f"{chat.name}-large", f"{chat.name}-router"
    ready_example(cluster)
    role_rules = cluster.server.get("roles", router, NS)["rules"]
    mark = cluster.server.mark()
    cluster.server.delete("deployments", large, namespace=NS)
    cluster.server.patch(
        "roles", router, {"rules": [{**role_rules[0], "verbs": ["get", "patch", "delete"]}]}, namespace=NS
    )
    wait_for(lambda: cluster.server.get("deployments", large, NS) is not None, what=f"{large} to come back")
    wait_for(lambda: cluster.server.get("roles", router, NS)["rules"] == role_rules, what="the Role restored")
    assert sorted(child_writes(cluster, mark)) == [
        ("create", "deployments", large),
        ("update", "roles", router),
    ]
    wait_for(lambda: cluster.condition("Ready").get("status") == "True", what="Ready again")


# --- semantic problems ----------------------------------------------------------------------------------


def fingerprint(cluster: Cluster) -> dict[tuple[str, str], str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in cluster.children().items()}


def test_a_missing_secret_degrades_and_leaves_the_children_untouched(chat: Cluster):
    cluster, secret = chat, f"{chat.name}-hf-token"  # a Secret of its own: the other cascades keep theirs
    document = example(cluster.name)
    document["spec"]["tiers"][1]["model"]["hubTokenSecret"]["name"] = secret
    cluster.kubectl("apply", "-f", "-", input=manifests(hf_token_secret(secret)))
    ready_example(cluster, document)
    before = fingerprint(cluster)
    mark = cluster.server.mark()
    cluster.kubectl("delete", "secret", secret, "-n", NS)
    degraded = wait_for(
        lambda: (c := cluster.condition("Degraded")).get("status") == "True" and c,
        what="Degraded",
        context=cluster.log_tail,
    )
    assert degraded["reason"] == "MissingSecret"
    assert (
        f'Secret "{secret}" used by tier "large" (model.hubTokenSecret) does not exist in namespace "llm"'
        in (degraded["message"])
    )
    time.sleep(4 * INTERVAL_S)
    assert fingerprint(cluster) == before
    assert not [w for w in cluster.operator_writes(since=mark) if w.resource in CHILD_RESOURCES]
    warning = wait_for(
        lambda: next(
            (
                e
                for e in cluster.server.objects("events", NS)
                if e.get("reason") == "MissingSecret" and e["involvedObject"]["name"] == cluster.name
            ),
            None,
        ),
        what="the MissingSecret event",
    )
    assert warning["type"] == "Warning" and f'Secret "{secret}"' in warning["message"]

    cluster.kubectl("apply", "-f", "-", input=manifests(hf_token_secret(secret)))
    wait_for(lambda: cluster.condition("Degraded").get("status") == "False", what="recovery", context=cluster.log_tail)
    assert fingerprint(cluster) == before
    cluster.kubectl("delete", "secret", secret, "-n", NS)


def test_a_gpu_type_no_node_offers_yet_is_applied_and_waits_for_such_a_node(chat: Cluster):
    """Scale from zero: the change is applied although no node has the GPU type (the Pending pods are what makes a
    pool add a node); TiersReady names the wait, Degraded stays False, and the node's arrival brings Ready, no edit.
    """
    cluster, large_name = chat, f"{chat.name}-large"
    ready_example(cluster)
    changed = copy.deepcopy(example(cluster.name))
    changed["spec"]["tiers"][1]["resources"]["gpuType"] = "NVIDIA-A100-SXM4-80GB"
    cluster.server.hold_unready(NS, large_name)  # the stand-in schedules nothing: no node, no ready pod
    try:
        a_node_of_the_new_type_brings_ready(cluster, changed)
    finally:
        cluster.server.release(NS, large_name)
        if cluster.server.get("nodes", "gpu-a100-1") is not None:
            cluster.server.delete("nodes", "gpu-a100-1")


def a_node_of_the_new_type_brings_ready(cluster: Cluster, changed: dict[str, Any]) -> None:
    """`changed` asks the large tier (held unready) for a GPU type no node offers, until a node with it joins."""
    large_name = f"{cluster.name}-large"
    cluster.kubectl("apply", "-f", "-", input=manifests(changed))
    generation = cluster.cascade()["metadata"]["generation"]
    waiting = wait_for(
        lambda: (
            (c := cluster.condition("TiersReady")).get("reason") == "WaitingForGpuNodes"
            and c.get("observedGeneration") == generation
            and c
        ),
        what="TiersReady WaitingForGpuNodes for the new generation",
        context=cluster.log_tail,
    )
    assert waiting["message"].startswith(
        'tier "large" has 0/1 ready replicas: its pods wait for a node with '
        "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB"
    )
    assert "nodes offer: NVIDIA-H100-80GB-HBM3, NVIDIA-L4" in waiting["message"]
    assert cluster.condition("Ready")["reason"] == "WaitingForGpuNodes"
    assert cluster.condition("Degraded")["status"] == "False"
    large = cluster.server.get("deployments", large_name, NS)
    assert large["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}

    cluster.server.add_node(
        "gpu-a100-1", labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, capacity={"nvidia.com/gpu": "8"}
    )
    cluster.server.release(NS, large_name)
    wait_for(
        lambda: cluster.condition("Ready").get("status") == "True",
        what="Ready with the new node",
        context=cluster.log_tail,
    )
    assert cluster.cascade()["metadata"]["generation"] == generation  # nobody edited the cascade

    apply_example(cluster)
    wait_for(
        lambda: (
            cluster.server.get("deployments", large_name, NS)["spec"]["template"]["spec"]["nodeSelector"]
            == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        ),
        what="the example's GPU type again",
    )
    wait_for(lambda: cluster.condition("Ready").get("status") == "True", what="Ready again", context=cluster.log_tail)


# --- online calibration -------------------------------------------------------------------------------


def test_shadow_samples_move_the_threshold_and_the_routers_take_it_without_a_restart(chat: Cluster, traffic: Traffic):
    """Every request measured (rate 1); the small tier always agrees: the operator moves its threshold down to the
    bound, Calibrated turns True, and the running router answers a 0.2-confident request from the small tier."""
    cluster = chat
    ready_example(cluster)
    document = example(cluster.name)
    document["spec"]["calibration"].update(
        minAgreement=0.9, shadowSampleRate=1.0, minSamples=20, minThreshold=0.1, matcher="exact"
    )
    cluster.kubectl("apply", "-f", "-", input=manifests(document))

    def sample_rate() -> float | None:
        configmap = cluster.server.get("configmaps", f"{cluster.name}-router", NS)
        sampling = RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"])).shadow_sampling
        return sampling.rate if sampling is not None else None

    wait_for(lambda: sample_rate() == 1.0, what="the router config with every request sampled")
    router = traffic.start_router(traffic.pod("8c1e-a"))
    for index in range(40):  # 30 confident, 10 not: every one measured against the large tier
        with traffic.one_at_a_time:
            traffic.small.token_prob = 0.9 if index % 4 else 0.2
            router.client.chat.completions.create(model=cluster.name, messages=[{"role": "user", "content": "hello"}])
    calibrated = wait_for(
        lambda: (c := cluster.condition("Calibrated")).get("status") == "True" and c,
        what="Calibrated",
        context=lambda: str(cluster.status().get("calibration")) + cluster.log_tail(),
    )
    assert calibrated["reason"] == "GoalMet" and "minAgreement=0.9" in calibrated["message"]
    (tier,) = cluster.status()["calibration"]["tiers"]
    assert tier["threshold"] == 0.1 and tier["declared"] == 0.35 and tier["samples"] >= 20  # minSamples
    assert cluster.status()["tiers"][0]["threshold"] == 0.1
    assert cluster.status()["traffic"]["shadowCalls"] > 0 and cluster.status()["cost"]["shadowCost"] > 0

    def answered_by_small() -> bool:
        with traffic.one_at_a_time:
            traffic.small.token_prob = 0.2
            raw = router.client.with_raw_response.chat.completions.create(
                model=cluster.name, messages=[{"role": "user", "content": "hello"}]
            )
        return raw.headers.get("x-kascade-tier") == "small"

    wait_for(answered_by_small, what="the router to take the calibrated threshold")
    traffic.stop_router(router.pod)
    apply_example(cluster)
    wait_for(
        lambda: (
            cluster.status().get("calibration", {}).get("tiers", [{}])[0].get("declared") == 0.35
            and cluster.condition("Calibrated").get("status") == "False"
        ),
        what="the example's calibration again",
    )


# --- deletion, and what the operator may call -------------------------------------------------------------


def a_cascade_deleted(cluster: Cluster) -> None:
    """The test's cascade deleted with kubectl: it is gone at once, its children once they are garbage-collected."""
    cluster.kubectl("delete", "modelcascade", cluster.name, "-n", NS, "--timeout=30s")
    assert cluster.server.get("modelcascades", cluster.name, NS) is None
    wait_for(lambda: not cluster.children(), what="the children to be garbage-collected")


def test_deleting_the_cascade_removes_the_children(chat: Cluster):
    ready_example(chat)
    a_cascade_deleted(chat)


def test_every_call_the_operator_made_is_allowed_by_its_documented_rbac(chat: Cluster):
    """Over a cascade's life (applied, Ready, deleted) and whatever else ran before in this cluster."""
    ready_example(chat)
    a_cascade_deleted(chat)
    operator = [r for r in chat.server.requests if r.user_agent.startswith(OPERATOR_AGENTS) and r.resource is not None]
    assert operator, "no operator requests were recorded"
    assert calls_outside_the_rules(operator) == []


def test_the_charts_roles_allow_every_call_the_operator_made(chat: Cluster, monkeypatch: pytest.MonkeyPatch):
    """The Helm chart's Roles (namespaced mode, cluster reads on) would have allowed every recorded operator call:
    over a cascade's life (applied, Ready, deleted) and whatever else ran before in this cluster."""
    cluster = chat
    charts = REPO / "tests" / "charts"
    if not (charts / "rbac_coverage.py").exists() or not (REPO / "charts" / "kascade").is_dir():
        pytest.skip("no Helm chart or RBAC checker in this checkout")
    monkeypatch.syspath_prepend(str(charts))
    from chart_testkit import by_kind, render_values
    from rbac_coverage import check_rbac

    ready_example(cluster)
    a_cascade_deleted(cluster)
    objects = render_values({"watch": {"namespaces": [NS]}, "rbac": {"clusterReads": True}})
    roles = by_kind(objects, "Role") + by_kind(objects, "ClusterRole")
    requests = [r for r in cluster.server.requests if r.user_agent.startswith(OPERATOR_AGENTS)]
    report = check_rbac(requests, roles)
    assert report.not_allowed == [], report.explain()
