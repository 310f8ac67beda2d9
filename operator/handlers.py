"""Kopf handlers of the ModelCascade operator: thin wiring of the reconcile to Kopf.

One idempotent reconcile (`reconcile.reconcile`) serves create, update and
resume; a drift loop runs the same reconcile every
`OperatorSettings.reconcile_interval_seconds` (`KASCADE_RECONCILE_INTERVAL_SECONDS`,
default 15) to correct drift, refresh tier readiness and fold the router
replicas' counters into the status. A per-cascade lock keeps the two apart.

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
from kascade.operator.reconcile import Operator, reconcile
from kascade.operator.settings import OperatorSettings, SettingsError

FINALIZER = "kascade.dev/operator"  # kopf's; the drift loop needs it (kopf stops daemons before deletion)
ANNOTATION_PREFIX = "kascade.dev"  # kopf's progress and last-handled-configuration annotations


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
    memo["kascade"] = Operator(api=await KubeApi(credentials).open(), settings=operator_settings)
    logger.info(
        "kascade operator: API %s, reconcile every %g s", credentials.host, operator_settings.reconcile_interval_seconds
    )


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


# Why a daemon and not `@kopf.timer`: a timer's interval is fixed when its decorator runs, at
# import, before `configure` has read the operator's settings. This daemon is Kopf's timer loop
# written out (wait the interval, reconcile; a TemporaryError's delay replaces the wait), and it
# waits the interval of the one `OperatorSettings` made at startup, so the environment is read
# in one place, once. Kopf stops it (the `stopped` flag) before a deletion and at exit.
@kopf.daemon(GROUP, VERSION, PLURAL)
async def refresh_cascade(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Drift, readiness and counters: the same reconcile, every `reconcile_interval_seconds`."""
    operator = _operator(memo)
    interval = operator.settings.reconcile_interval_seconds
    delay = interval
    while not await stopped.wait(delay):
        delay = interval
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


@kopf.on.resume(GROUP, VERSION, DISTILLATION_PLURAL)
@kopf.on.create(GROUP, VERSION, DISTILLATION_PLURAL)
async def check_run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A run nobody would run (its cascade is missing, or does not distil) says so in its status, once.

    The runs themselves are followed by their cascade's reconcile (`distillation_loop`).
    """
    await refuse_orphan_run(_operator(memo), body)
