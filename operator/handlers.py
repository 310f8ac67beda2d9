"""Kopf handlers of the ModelCascade operator: thin wiring of the pure core to the API.

One reconcile serves create, update and resume; a timer runs the same
reconcile every `KASCADE_RECONCILE_INTERVAL_SECONDS` (default 15) to correct
drift, refresh tier readiness and fold the router replicas' counters into the
status. A reconcile:

1. parses the resource (a validation error: conditions Ready=False and
   Degraded=True with reason InvalidSpec, then `kopf.PermanentError`);
2. observes: the cascade's children (one labelled list per kind), the Secrets
   it references, the GPU products nodes offer, and, when the status holds
   counter slots, the router pods that exist;
3. builds the desired children (`builders.build_children`), adds owner
   references, and plans (`plan.plan_children`: spec hashes decide);
4. when the spec is semantically wrong (a missing Secret, a GPU type no node
   offers, a name taken by someone else) it applies NOTHING and says so in
   the Degraded condition; otherwise it creates, replaces and deletes;
5. writes the status (conditions, tiers, endpoint, observedGeneration, folded
   traffic and cost) as one merge patch on the status subresource, only when
   it differs from what is there, with the observed resourceVersion as a
   precondition so that stale data never lowers a figure or retires a slot.

A reconcile that finds nothing to change makes no write at all. Run with
`kascade operator` (see `kascade.operator.main`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kascade.api.modelcascade import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    ModelCascade,
)
from kascade.operator.build_router import endpoint_url
from kascade.operator.build_tier import (
    GPU_PRODUCT_LABEL,
    cascade_namespace,
    deploys_pods,
)
from kascade.operator.builders import CHILD_KINDS, build_children
from kascade.operator.conditions import (
    DEGRADED,
    READY,
    Problem,
    check_semantics,
    compute_health,
    invalid_spec_conditions,
)
from kascade.operator.counters import (
    REPLICA_COUNTERS,
    FoldResult,
    apply_merge_patch,
    fold_replica_counters,
)
from kascade.operator.k8s import (
    MODELCASCADE_API_VERSION,
    ApiError,
    Credentials,
    KubeApi,
    apply_plan,
    plural_of,
)
from kascade.operator.labels import (
    COMPONENT_ROUTER,
    SPEC_HASH_ANNOTATION,
    label_value,
    owned_selector,
    selector_labels,
    selector_string,
)
from kascade.operator.plan import (
    ChildKey,
    Plan,
    child_key,
    index_children,
    plan_children,
)
from kascade.operator.settings import OperatorSettings, SettingsError
from pydantic import ValidationError

log = logging.getLogger("kascade.operator")

RECONCILE_INTERVAL_ENV = "KASCADE_RECONCILE_INTERVAL_SECONDS"
DEFAULT_RECONCILE_INTERVAL_S = 15.0
NODE_CACHE_SECONDS = 10.0  # one node list serves every cascade reconciled within this time
STATUS_WRITE_ATTEMPTS = 4
FINALIZER = "kascade.dev/operator"  # kopf's; the drift timer needs it (kopf stops timers before deletion)
ANNOTATION_PREFIX = "kascade.dev"  # kopf's progress and last-handled-configuration annotations
NAME_CONFLICT = "NameConflict"
APPLY_FAILED = "ApplyFailed"
_EVENT_MESSAGE_LIMIT = 1000


def reconcile_interval(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between drift/status reconciles of each cascade: `$KASCADE_RECONCILE_INTERVAL_SECONDS` or 15.

    Read when this module is imported: kopf fixes a timer's interval when it is registered.
    """
    raw = (os.environ if environ is None else environ).get(RECONCILE_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_RECONCILE_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{RECONCILE_INTERVAL_ENV} must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= 3600:
        raise SettingsError(f"{RECONCILE_INTERVAL_ENV} must lie in (0, 3600] seconds, not {raw!r}")
    return value


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain(value: Any) -> Any:
    """kopf's body views as plain dicts and lists (what pydantic and deep copies need)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


# --- parsing ----------------------------------------------------------------------------


def parse_cascade(body: Mapping[str, Any]) -> ModelCascade:
    """The resource as the API types see it (status left out: the operator reads it raw). Raises ValidationError."""
    meta = body.get("metadata") or {}
    return ModelCascade.model_validate(
        {
            "apiVersion": body.get("apiVersion", MODELCASCADE_API_VERSION),
            "kind": body.get("kind", KIND),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": plain(body.get("spec") or {}),
        }
    )


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line a user can act on: `spec.tiers.0.accept: ...; ...`."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "the resource does not parse: " + "; ".join(parts)


# --- observing -----------------------------------------------------------------------------


def referenced_secrets(cascade: ModelCascade) -> dict[str, set[str]]:
    """Secret name -> the keys the cascade reads from it."""
    refs = [tier.model.hub_token_secret for tier in cascade.spec.tiers]
    refs += [tier.api_key_secret for tier in cascade.spec.tiers]
    refs.append(cascade.spec.router.api_key_secret)
    wanted: dict[str, set[str]] = {}
    for ref in refs:
        if ref is not None:
            wanted.setdefault(ref.name, set()).add(ref.key)
    return wanted


def wants_gpu_products(cascade: ModelCascade) -> bool:
    """Whether any tier asks for a GPU type (only then are nodes listed)."""
    return any(deploys_pods(t) and t.resources.gpus > 0 and t.resources.gpu_type for t in cascade.spec.tiers)


@dataclass
class GpuProducts:
    """The `nvidia.com/gpu.product` values over the cluster's nodes, listed at most once per `ttl_s`.

    None when nodes cannot be listed (a namespace-scoped install without the
    node rule): the GPU-type check is then skipped, not failed.
    """

    ttl_s: float = NODE_CACHE_SECONDS
    _value: frozenset[str] | None = None
    _at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, api: KubeApi) -> frozenset[str] | None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._at is None or now - self._at >= self.ttl_s:
                self._value = await self._list(api)
                self._at = now
            return self._value

    @staticmethod
    async def _list(api: KubeApi) -> frozenset[str] | None:
        try:
            nodes = await api.list("v1", "nodes", label_selector=GPU_PRODUCT_LABEL, kind="Node")
        except ApiError as error:
            if error.forbidden:
                log.warning("cannot list nodes (%s): the GPU-type check is skipped", error.message)
                return None
            raise
        return frozenset(
            value for node in nodes if (value := ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL))
        )


@dataclass
class Observation:
    children: dict[ChildKey, dict[str, Any]]
    secrets: dict[str, Collection[str]]
    gpu_products: frozenset[str] | None


async def _secret_keys(api: KubeApi, namespace: str, name: str, wanted: set[str]) -> Collection[str] | None:
    try:
        secret = await api.get("v1", "secrets", name, namespace=namespace)
    except ApiError as error:
        if error.forbidden:
            log.warning("cannot read Secret %s/%s (%s): assumed present", namespace, name, error.message)
            return wanted
        raise
    if secret is None:
        return None
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


async def observe(api: KubeApi, cascade: ModelCascade, gpu_products: GpuProducts) -> Observation:
    """What the cluster holds for `cascade`, read concurrently."""
    namespace = cascade_namespace(cascade)
    selector = selector_string(owned_selector(cascade.metadata.name))
    wanted = referenced_secrets(cascade)

    async def nothing() -> None:
        return None

    listed, secrets, products = await asyncio.gather(
        asyncio.gather(*(
            api.list(kind.api_version, kind.plural, namespace=namespace, label_selector=selector, kind=kind.kind)
            for kind in CHILD_KINDS
        )),
        asyncio.gather(*(_secret_keys(api, namespace, name, keys) for name, keys in wanted.items())),
        gpu_products.get(api) if wants_gpu_products(cascade) else nothing(),
    )  # fmt: skip
    children = index_children(obj for objects in listed for obj in objects)
    found = {name: keys for name, keys in zip(wanted, secrets, strict=True) if keys is not None}
    return Observation(children=children, secrets=found, gpu_products=products)


async def find_taken_names(
    api: KubeApi, desired: Iterable[Mapping[str, Any]], observed: Mapping[ChildKey, Mapping[str, Any]], namespace: str
) -> dict[ChildKey, dict[str, Any]]:
    """Objects that hold a desired name but were not listed as our children (someone else's)."""
    missing = [m for m in desired if child_key(m) not in observed]
    found = await asyncio.gather(*(
        api.get(m["apiVersion"], _plural(m), m["metadata"]["name"], namespace=namespace) for m in missing
    ))  # fmt: skip
    taken = {}
    for manifest, obj in zip(missing, found, strict=True):
        if obj is not None:
            obj.setdefault("apiVersion", manifest["apiVersion"])
            obj.setdefault("kind", manifest["kind"])
            taken[child_key(manifest)] = obj
    return taken


def _plural(manifest: Mapping[str, Any]) -> str:
    return plural_of(manifest["apiVersion"], manifest["kind"])


async def live_router_pods(api: KubeApi, cascade: ModelCascade) -> list[str]:
    """Names of the router's pods that exist now, in any phase."""
    selector = selector_string(selector_labels(cascade.metadata.name, COMPONENT_ROUTER))
    pods = await api.list("v1", "pods", namespace=cascade_namespace(cascade), label_selector=selector, kind="Pod")
    return [pod["metadata"]["name"] for pod in pods]


# --- deciding ---------------------------------------------------------------------------------

# Fields the API server does not default: compared as they are, so that an in-place edit (a widened
# Role, a hand-edited router config) counts as drift even though the spec-hash annotation still matches.
EXACT_FIELDS: dict[str, tuple[str, ...]] = {
    "ConfigMap": ("data", "binaryData"),
    "Role": ("rules",),
    "RoleBinding": ("roleRef", "subjects"),
}


def mark_edited(
    desired: Iterable[Mapping[str, Any]], observed: Mapping[ChildKey, Mapping[str, Any]]
) -> dict[ChildKey, dict[str, Any]]:
    """`observed`, with the spec hash taken off children whose exact fields differ from the desired ones.

    The plan compares spec hashes only (the API server adds defaults to most
    kinds, so whole objects never compare equal); for the kinds in
    `EXACT_FIELDS` a difference is an edit, and the plan then replaces them.
    """
    result = {key: dict(obj) for key, obj in observed.items()}
    for manifest in desired:
        key = child_key(manifest)
        fields = EXACT_FIELDS.get(key[0])
        current = result.get(key)
        if not fields or current is None:
            continue
        if any((manifest.get(name) or None) != (current.get(name) or None) for name in fields):
            metadata = dict(current.get("metadata") or {})
            metadata["annotations"] = {
                k: v for k, v in (metadata.get("annotations") or {}).items() if k != SPEC_HASH_ANNOTATION
            }
            current["metadata"] = metadata
    return result


def conflict_problems(plan: Plan, namespace: str) -> list[Problem]:
    return [
        Problem(
            NAME_CONFLICT,
            f'{kind} "{name}" already exists in namespace "{namespace}" and is not managed by this cascade; '
            "delete or rename it, or rename the cascade",
        )
        for kind, name in plan.conflicts
    ]


def compose_status(
    cascade: ModelCascade,
    settings: OperatorSettings,
    status: Mapping[str, Any],
    observed: Mapping[ChildKey, Mapping[str, Any]],
    *,
    problems: list[Problem],
    live_pods: Collection[str],
    now: str,
    generation: int | None,
) -> tuple[dict[str, Any], FoldResult]:
    """The status merge patch: observedGeneration, endpoint, tiers, conditions, folded traffic and cost."""
    health = compute_health(
        cascade, observed, previous=status.get("conditions") or [], problems=problems, now=now, generation=generation
    )
    fold = fold_replica_counters(status, live_pods, now, tiers=health.tiers, tier_count=len(cascade.spec.tiers))
    patch = {
        "observedGeneration": generation,
        "endpoint": endpoint_url(cascade, settings),
        **health.status_fields(),
        **fold.status_patch(),
    }
    return patch, fold


def invalid_status(status: Mapping[str, Any], *, message: str, now: str, generation: int | None) -> dict[str, Any]:
    conditions = invalid_spec_conditions(status.get("conditions") or [], message=message, now=now, generation=generation)
    return {
        "observedGeneration": generation,
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
    }


def changes_status(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether the merge patch would change the status (the reconcile writes nothing otherwise)."""
    return apply_merge_patch(status, patch) != dict(status)


@dataclass(frozen=True)
class Notice:
    """An Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _conditions(values: Iterable[Any]) -> dict[str, Condition]:
    result = {}
    for value in values:
        condition = value if isinstance(value, Condition) else Condition.model_validate(plain(value))
        result[condition.type] = condition
    return result


def transition_notices(before: Iterable[Any], after: Iterable[Any]) -> list[Notice]:
    """Events for condition changes a user should hear about: Degraded raised or changed, recovered, Ready."""
    old, new = _conditions(before), _conditions(after)
    notices = []
    was, now = old.get(DEGRADED), new.get(DEGRADED)
    if now is not None and now.status == "True":
        if was is None or was.status != "True" or (was.reason, was.message) != (now.reason, now.message):
            notices.append(Notice("Warning", now.reason, now.message))
    elif was is not None and was.status == "True" and now is not None:
        notices.append(Notice("Normal", "Recovered", f"no longer degraded (was: {was.reason})"))
    ready_was, ready_now = old.get(READY), new.get(READY)
    if ready_now is not None and ready_now.status == "True" and (ready_was is None or ready_was.status != "True"):
        notices.append(Notice("Normal", "Ready", ready_now.message))
    return notices


# --- writing the status -------------------------------------------------------------------


StatusComposer = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def write_status(
    api: KubeApi,
    *,
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    resource_version: str | None,
    compose: StatusComposer,
) -> tuple[Mapping[str, Any], dict[str, Any] | None]:
    """Compose the status patch from `status` and write it if it changes anything; (status it was based on, patch or None).

    The write carries `resource_version` as a precondition: when the object
    moved on (a router wrote its slot, the spec changed), the API server says
    409 and the status is re-read and recomposed, so a write is never based on
    stale slots or stale totals.
    """
    for _ in range(STATUS_WRITE_ATTEMPTS):
        patch = await compose(status)
        if not changes_status(status, patch):
            return status, None
        try:
            await api.patch_status(MODELCASCADE_API_VERSION, PLURAL, name, namespace=namespace,
                                   status_patch=patch, resource_version=resource_version)  # fmt: skip
            return status, patch
        except ApiError as error:
            if not error.conflict:
                raise
        fresh = await api.get(MODELCASCADE_API_VERSION, PLURAL, name, namespace=namespace)
        if fresh is None:
            return status, None  # deleted meanwhile
        status, resource_version = fresh.get("status") or {}, fresh["metadata"].get("resourceVersion")
    raise kopf.TemporaryError("the status kept changing under the operator; trying again", delay=1)


# --- the reconcile ---------------------------------------------------------------------------


@dataclass
class Operator:
    """What every reconcile needs; made once at startup and kept in kopf's memo."""

    api: KubeApi
    settings: OperatorSettings
    gpu_products: GpuProducts = field(default_factory=GpuProducts)


def _post(body: Any, notice: Notice) -> None:
    message = notice.message[:_EVENT_MESSAGE_LIMIT]
    try:
        if notice.type == "Warning":
            kopf.warn(body, reason=notice.reason, message=message)
        else:
            # kopf.info is filtered by the posting level (WARNING: kopf's own chatter stays off the
            # API); the operator's notable actions are posted regardless.
            kopf.event(body, type="Normal", reason=notice.reason, message=message)
    except LookupError:  # called outside a running operator (tests, tools): nowhere to post
        log.info("%s %s: %s", notice.type, notice.reason, message)


async def reconcile(operator: Operator, body: Any, logger: kopf.Logger) -> None:
    """Bring the children and the status of one ModelCascade to what its spec asks. Idempotent."""
    meta = body.get("metadata") or {}
    name, namespace = meta["name"], meta.get("namespace") or "default"
    generation = meta.get("generation")
    resource_version = meta.get("resourceVersion")
    status = plain(body.get("status") or {})
    api = operator.api

    try:
        cascade = parse_cascade(body)
    except ValidationError as error:
        message = validation_message(error)

        async def compose_invalid(current: Mapping[str, Any]) -> dict[str, Any]:
            return invalid_status(current, message=message, now=now_rfc3339(), generation=generation)

        before, written = await write_status(api, namespace=namespace, name=name, status=status,
                                             resource_version=resource_version, compose=compose_invalid)  # fmt: skip
        if written is not None:
            for notice in transition_notices(before.get("conditions") or [], written.get("conditions") or []):
                _post(body, notice)
        raise kopf.PermanentError(message)

    observation = await observe(api, cascade, operator.gpu_products)
    problems = check_semantics(cascade, secrets=observation.secrets, gpu_products=observation.gpu_products)
    observed = observation.children
    plan: Plan | None = None
    if not problems:
        desired = build_children(cascade, operator.settings)
        kopf.append_owner_reference(desired, owner=body)  # controller, blockOwnerDeletion: deleting the cascade removes them
        observed = {**observed, **await find_taken_names(api, desired, observed, namespace)}
        plan = plan_children(desired, mark_edited(desired, observed), cascade=label_value(name))
        problems = conflict_problems(plan, namespace)

    if not problems and plan is not None and not plan.empty:
        logger.info("applying: %s", plan.summary())
        report = await apply_plan(api, plan, observed, namespace=namespace)
        if report.wrote:
            _post(body, Notice("Normal", "Applied", report.summary()))
        if report.failures:
            problems = [Problem(APPLY_FAILED, "; ".join(report.failures))]
        elif report.stale:
            raise kopf.TemporaryError(f"children changed while applying ({report.summary()} done); again", delay=1)

    live_pods: list[str] | None = None
    folds: list[FoldResult] = []

    async def compose(current: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal live_pods
        if current.get(REPLICA_COUNTERS) and live_pods is None:
            live_pods = await live_router_pods(api, cascade)
        patch, fold = compose_status(cascade, operator.settings, current, observed, problems=problems,
                                     live_pods=live_pods or [], now=now_rfc3339(), generation=generation)  # fmt: skip
        folds.append(fold)
        return patch

    before, written = await write_status(api, namespace=namespace, name=name, status=status,
                                         resource_version=resource_version, compose=compose)  # fmt: skip
    fold = folds[-1]
    for line in fold.guarded:
        log.warning("%s/%s: %s", namespace, name, line)
    for line in fold.warnings:
        log.warning("%s/%s: %s", namespace, name, line)
    if written is not None:
        if problems:
            logger.info("degraded: %s", "; ".join(p.message for p in problems))
        if fold.retired:
            logger.info("retired the counter slots of gone router processes: %s", ", ".join(fold.retired))
        for notice in transition_notices(before.get("conditions") or [], written.get("conditions") or []):
            _post(body, notice)
    if problems and problems[0].reason == APPLY_FAILED:
        raise kopf.TemporaryError(problems[0].message, delay=10)


# --- kopf wiring ------------------------------------------------------------------------------

try:
    _INTERVAL_S, _INTERVAL_ERROR = reconcile_interval(), None
except SettingsError as _error:  # reported by `configure` at startup (and by `kascade operator` before it)
    _INTERVAL_S, _INTERVAL_ERROR = DEFAULT_RECONCILE_INTERVAL_S, str(_error)


def _operator(memo: kopf.Memo) -> Operator:
    return memo["kascade"]


def _lock(memo: kopf.Memo) -> asyncio.Lock:
    """One reconcile at a time per cascade (the handlers and the timer share kopf's per-object memo)."""
    lock = memo.get("kascade_lock")
    if lock is None:
        lock = memo["kascade_lock"] = asyncio.Lock()
    return lock


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Operator-wide tuning, the operator's settings from KASCADE_* variables, and its API client."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Only warnings become Events: kopf's "handler succeeded" chatter would be a write per reconcile.
    settings.posting.level = logging.WARNING
    if _INTERVAL_ERROR is not None:
        raise kopf.PermanentError(_INTERVAL_ERROR)
    try:
        operator_settings = OperatorSettings.from_env()
    except SettingsError as error:
        raise kopf.PermanentError(str(error)) from None
    credentials = await asyncio.to_thread(Credentials.from_environment)
    memo["kascade"] = Operator(api=await KubeApi(credentials).open(), settings=operator_settings)
    logger.info("kascade operator: API %s, reconcile every %g s", credentials.host, _INTERVAL_S)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    operator = memo.get("kascade")
    if operator is not None:
        await operator.api.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_cascade(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Create, update and resume: one idempotent reconcile."""
    async with _lock(memo):
        await reconcile(_operator(memo), body, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL_S, initial_delay=_INTERVAL_S)
async def refresh_cascade(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Drift, readiness and counters: the same reconcile, on a timer."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    async with _lock(memo):
        try:
            await reconcile(_operator(memo), body, logger)
        except kopf.PermanentError:
            pass  # an unparseable spec: the conditions say so already; wait for the next change
