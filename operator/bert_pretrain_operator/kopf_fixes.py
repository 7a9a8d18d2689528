"""A fix for a kopf bug that can stop every handler of the operator for good.

kopf runs no handler until each indexed resource's watch in each watched namespace
has listed once, and each object that listing found has been indexed
(``operator_indexed``: a set of toggles, one per watch and one per such object). When
a namespace goes away, kopf cancels its watch and the watch's workers, but neither
drops its toggle if it ends before that point (kopf 1.45.2: ``queueing.watcher``
drops its own only on ``Bookmark.LISTED``, a worker its object's only once indexed,
and ``orchestration.terminate_redundancies`` drops none). The set then never turns on
again, and every job whose namespace's watch started after that waits forever, with
nothing in the log.

With glob ``watchNamespaces`` (``team-*``) that is one namespace deleted while the
operator starts, or while another new namespace is being listed: CI namespaces,
preview environments, a tenant offboarded. It is the likeliest cause of a CI run of
ours in which the suite's operator, started while earlier tests' namespaces were
terminating, reconciled nothing for 120 s and logged nothing (we could not make it
happen again on demand: it is a race). tests/operator/test_kopf_fixes.py holds the
window open with kopf's own orchestration and shows the block without this fix.

The fix wraps kopf's watcher and worker coroutines so that either one, ending for
whatever reason, drops its toggle: a namespace that is gone has nothing left to wait
for. Dropping a toggle already dropped changes nothing, so the wrappers stay harmless
once kopf fixes this upstream. If kopf's coroutines change signature, the fix is not
installed, a warning says so, and the test fails.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from kopf._core.reactor import queueing

log = logging.getLogger(__name__)

_MARK = "_bpj_drops_index_toggle"
#: kopf's coroutines that hold an index toggle, called by module attribute (so the hook).
_WRAPPED = ("watcher", "worker")
_NEEDED = ("operator_indexed", "resource_indexed")

Coro = Callable[..., Coroutine[Any, Any, None]]


def _dropping_its_toggle(run: Coro) -> Coro:
    @functools.wraps(run)
    async def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            await run(*args, **kwargs)
        finally:
            indexed, toggle = kwargs.get("operator_indexed"), kwargs.get("resource_indexed")
            if indexed is not None and toggle is not None:
                await indexed.drop_toggle(toggle)

    setattr(wrapped, _MARK, True)
    return wrapped


def install() -> bool:
    """Wrap kopf's watcher and worker once; true if the fix is in place."""
    coros: dict[str, Coro] = {name: getattr(queueing, name) for name in _WRAPPED}
    if all(getattr(coro, _MARK, False) for coro in coros.values()):
        return True
    for name, coro in coros.items():
        if not all(p in inspect.signature(coro).parameters for p in _NEEDED):
            log.warning(
                "kopf has changed; the index-toggle fix is not installed",
                extra={"kopf_function": f"queueing.{name}{inspect.signature(coro)}"},
            )
            return False
    for name, coro in coros.items():
        if not getattr(coro, _MARK, False):
            setattr(queueing, name, _dropping_its_toggle(coro))
    return True
