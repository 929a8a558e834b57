"""Background loops that cannot die silently: an exception is logged, counted, and the loop restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .. import metrics

log = logging.getLogger("akto_hook")

RESTART_PAUSE_SECONDS = 0.1


async def supervised(name: str, loop_forever: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop_forever`` for good; on an exception log it, count it in
    ``akto_hook_task_failures_total{task=name}`` and start it again after a short pause."""
    task = asyncio.current_task()
    while True:
        try:
            await loop_forever()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.TASK_FAILURES.labels(name).inc()
            log.exception("akto background task %s failed; restarting it", name)
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # a library swallowed our cancellation: stop anyway
        await asyncio.sleep(RESTART_PAUSE_SECONDS)
