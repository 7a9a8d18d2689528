"""kopf_fixes: a namespace gone before its first listing no longer stops every handler.

These drive kopf's own orchestration (the functions its orchestrator calls when the
watched namespaces change) and its own per-object worker, and hold open the window in
which the bug strikes instead of racing it: the operator paused so that no watch
lists, a worker cancelled before its object is indexed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.configs.configuration import OperatorSettings
from kopf._cogs.structs.references import Resource
from kopf._core.reactor import orchestration, queueing

from bert_pretrain_operator import handlers, kopf_fixes

JOBS = Resource(group="batch", version="v1", plural="jobs", namespaced=True)


async def _never_called(**_: Any) -> None:
    raise AssertionError("a paused watcher processed an event")


async def _indexed_after_namespace_goes(*, listed_first: set[str]) -> bool:
    paused = aiotoggles.ToggleSet(any)
    ensemble = orchestration.Ensemble(
        operator_indexed=aiotoggles.ToggleSet(all),
        operator_paused=paused,
        peering_missing=await paused.make_toggle(True, name="held paused by the test"),
    )
    namespaces = {"t-stays", "t-goes"}
    await orchestration.spawn_missing_watchers(
        processor=_never_called,
        settings=OperatorSettings(),
        indexed_resources={JOBS},
        watched_resources={JOBS},
        watched_namespaces=namespaces,
        ensemble=ensemble,
    )
    assert not ensemble.operator_indexed.is_on(), "nothing has listed yet"
    # The namespaces that list before the other goes: their toggles drop as kopf's own do.
    for toggle in list(ensemble.operator_indexed):
        if any(toggle.name == f"{JOBS}@{ns}" for ns in listed_first):
            await ensemble.operator_indexed.drop_toggle(toggle)
    await orchestration.terminate_redundancies(
        remaining_resources={JOBS},
        remaining_namespaces=(namespaces - {"t-goes"}) | {None},
        ensemble=ensemble,
    )
    indexed = ensemble.operator_indexed.is_on()
    await orchestration.terminate_redundancies(
        remaining_resources=set(), remaining_namespaces=set(), ensemble=ensemble
    )
    return indexed


async def _indexed_after_worker_cancelled() -> bool:
    indexed = aiotoggles.ToggleSet(all)
    toggle = await indexed.make_toggle(name="an object listed in a namespace that goes")
    entered = asyncio.Event()

    async def processor(**_: Any) -> None:
        entered.set()
        await asyncio.Event().wait()  # kopf throttling it, say: never indexed

    key = (JOBS, "uid-1")
    streams = {key: queueing.Stream(backlog=asyncio.Queue(), pressure=asyncio.Event())}
    await streams[key].backlog.put({"type": None, "object": {"metadata": {"uid": "uid-1"}}})
    task = asyncio.create_task(
        queueing.worker(
            signaller=asyncio.Condition(),
            settings=OperatorSettings(),
            processor=processor,
            resource_indexed=toggle,
            operator_indexed=indexed,
            streams=streams,
            key=key,
        )
    )
    await entered.wait()
    assert not indexed.is_on()
    task.cancel()  # what the watcher's scheduler does when its namespace is gone
    await asyncio.gather(task, return_exceptions=True)
    return indexed.is_on()


def test_the_operator_installs_the_fix() -> None:
    assert handlers.KOPF_FIXED  # handlers installs it on import, before kopf starts
    for name in ("watcher", "worker"):
        assert getattr(getattr(queueing, name), "_bpj_drops_index_toggle", False), name
    assert kopf_fixes.install()  # idempotent


def test_a_worker_cancelled_before_its_object_is_indexed_leaves_handlers_free() -> None:
    assert kopf_fixes.install()
    assert asyncio.run(_indexed_after_worker_cancelled())


def test_a_namespace_deleted_before_its_listing_leaves_handlers_free() -> None:
    assert kopf_fixes.install()
    assert asyncio.run(_indexed_after_namespace_goes(listed_first={"t-stays"}))


def test_the_namespaces_that_remain_still_hold_handlers_until_they_list() -> None:
    assert kopf_fixes.install()
    # t-stays has not listed: handlers must still wait for it, fix or not.
    assert not asyncio.run(_indexed_after_namespace_goes(listed_first=set()))
