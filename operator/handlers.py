"""Kopf handlers of the ModelCascade operator: thin wiring of the reconcile to Kopf.

One idempotent reconcile (`reconcile.reconcile`) serves create, update and
resume; a drift loop per cascade runs the same reconcile every
`OperatorSettings.reconcile_interval_seconds` (`KASCADE_RECONCILE_INTERVAL_SECONDS`,
default 15) to correct drift, refresh tier readiness and fold the router
replicas' counters into the status. A per-cascade lock keeps the two apart.
The children come from the operator's watches (`watch_cache.WatchCache`, made
at startup with the API client, closed at cleanup), so a drift reconcile in
steady state makes no request to the API server.

No handler needs a finalizer, so Kopf adds none: children go with their
cascade by owner references (the garbage collector), and the drift loop is a
task of the operator's own, not a `@kopf.daemon` (Kopf blocks the deletion of
every object a daemon runs for with a finalizer, and a deletion without the
operator running, such as an uninstall, would then hang). The loop starts on
a cascade's first watch event and stops on its DELETED event.

Distillation runs are followed by their cascade's reconcile; a run created by
hand for a cascade that is missing or does not distil is told so when it
appears (`check_run`).

Run with `kascade operator` (see `kascade.operator.main`), or
`kopf run -m kascade.operator.handlers`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kascade.api.distillation import DISTILLATION_PLURAL
from kascade.api.modelcascade import GROUP, PLURAL, VERSION
from kascade.operator.distillation_loop import refuse_orphan_run
from kascade.operator.kube_api import KubeApi
from kascade.operator.kube_credentials import Credentials
from kascade.operator.observe import FoundByName
from kascade.operator.reconcile import Operator, reconcile
from kascade.operator.settings import OperatorSettings, SettingsError
from kascade.operator.watch_cache import WatchCache

# No handler adds it any more; named so that Kopf removes it from cascades an older operator marked.
FINALIZER = "kascade.dev/operator"
ANNOTATION_PREFIX = "kascade.dev"  # kopf's progress and last-handled-configuration annotations

_BODY = "kascade_body"  # per-object memo: the cascade as its last watch event showed it
_REFRESH = "kascade_refresh"  # per-object memo: its drift loop
_REFRESHERS = "kascade_refreshers"  # operator memo (shared by the per-object copies): every drift loop, for cleanup


def _operator(memo: kopf.Memo) -> Operator:
    return memo["kascade"]


def _lock(memo: kopf.Memo) -> asyncio.Lock:
    """One reconcile at a time per cascade (the handlers and the drift loop share kopf's per-object memo)."""
    lock = memo.get("kascade_lock")
    if lock is None:
        lock = memo["kascade_lock"] = asyncio.Lock()
    return lock


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Operator-wide tuning, the operator's settings from KASCADE_* variables (read here, once), its API client."""
    # Kopf adds a finalizer only for handlers that need one (daemons, timers, deletion handlers): none here.
    # Naming the one older operators added makes Kopf remove it from the cascades that still carry it.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Only warnings become Events: kopf's "handler succeeded" chatter would be a write per reconcile.
    settings.posting.level = logging.WARNING
    try:
        operator_settings = OperatorSettings.from_env()
    except SettingsError as error:
        raise kopf.PermanentError(str(error)) from None
    credentials = await asyncio.to_thread(Credentials.from_environment)
    api = await KubeApi(credentials).open()
    memo["kascade"] = Operator(
        api=api,
        settings=operator_settings,
        cache=WatchCache(api),
        by_name=FoundByName(ttl_s=operator_settings.reconcile_interval_seconds),
    )
    memo[_REFRESHERS] = set()
    logger.info(
        "kascade operator: API %s, reconcile every %g s", credentials.host, operator_settings.reconcile_interval_seconds
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    loops = list(memo.get(_REFRESHERS) or ())
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    operator = memo.get("kascade")
    if operator is not None:
        if operator.cache is not None:
            await operator.cache.close()
        await operator.api.close()


@kopf.on.probe(id="reconciles")
def count_reconciles(memo: kopf.Memo, **_: Any) -> int:
    """Reconciles begun since the operator started (the liveness endpoint's JSON, refreshed every 10 s)."""
    return _operator(memo).reconciles


@kopf.on.probe(id="watchedObjects")
def count_watched_objects(memo: kopf.Memo, **_: Any) -> int:
    """Objects the operator's watches hold: the children and router pods of every namespace with cascades."""
    cache = _operator(memo).cache
    return cache.size() if cache is not None else 0


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_cascade(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Create, update and resume: one idempotent reconcile."""
    async with _lock(memo):
        await reconcile(_operator(memo), body, logger)


# Why not `@kopf.daemon` or `@kopf.timer`: Kopf puts a finalizer on every object one runs for, so that
# deleting a cascade waits for the operator, and an uninstall (operator first, then the CRDs) hangs.
# A timer's interval is also fixed at import, before `configure` read the settings. The loop is
# started here, in the cascade's own handling context (so its Notices reach Kopf's event poster),
# and waits the interval of the one `OperatorSettings` made at startup.
@kopf.on.event(GROUP, VERSION, PLURAL)
async def follow_cascade(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Each cascade's drift loop: started on its first watch event, given each newer body, stopped when it is gone."""
    memo[_BODY] = body
    task: asyncio.Task[None] | None = memo.get(_REFRESH)
    if type == "DELETED":
        if task is not None:
            task.cancel()
        return
    if task is None:
        loops: set[asyncio.Task[None]] = memo[_REFRESHERS]
        memo[_REFRESH] = task = asyncio.create_task(
            refresh_cascade(memo, logger), name=f"kascade drift {body.meta.uid}"
        )
        loops.add(task)
        task.add_done_callback(loops.discard)


async def refresh_cascade(memo: kopf.Memo, logger: kopf.Logger) -> None:
    """Drift, readiness and counters: the same reconcile, every `reconcile_interval_seconds`, on the latest body.

    A TemporaryError's delay replaces the next wait (as Kopf's timers do); any other failure is logged and
    retried after the interval, so the loop lives as long as its cascade.
    """
    operator = _operator(memo)
    interval = operator.settings.reconcile_interval_seconds
    delay = interval
    while True:
        await asyncio.sleep(delay)
        delay = interval
        body = memo[_BODY]
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        async with _lock(memo):
            try:
                await reconcile(operator, body, logger)
            except kopf.PermanentError:
                pass  # an unparseable spec: the conditions say so already; wait for the next change
            except kopf.TemporaryError as error:
                logger.info("%s; again in %g s", error, error.delay or interval)
                delay = error.delay or interval
            except Exception:  # the loop must outlive a failed reconcile (an unreachable API server)
                logger.exception("the drift reconcile failed; again in %g s", interval)


@kopf.on.resume(GROUP, VERSION, DISTILLATION_PLURAL)
@kopf.on.create(GROUP, VERSION, DISTILLATION_PLURAL)
async def check_run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A run nobody would run (its cascade is missing, or does not distil) says so in its status, once.

    The runs themselves are followed by their cascade's reconcile (`distillation_loop`: read, plan with
    `run_plan`, apply).
    """
    await refuse_orphan_run(_operator(memo), body)
