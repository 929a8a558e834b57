"""Keep a stopping worker inside its grace period when Redis is gone.

After a stop signal arq lets running jobs finish (``job_completion_wait``, at most 45 s), then closes:
it waits for the cancelled jobs, deletes its health-check key and closes the pool. Each of those
Redis calls goes through the pool's outage retry (about 5 minutes, ``connections.outage_retry``), so
with Redis down the worker outlived Kubernetes' grace period and was killed. What those calls do
is bookkeeping: a job cut short stays in arq's queue and runs again once its in-progress key
expires, as after a kill. So the close gets :data:`CLOSE_SECONDS`; past that the worker runs its own
shutdown (no Redis) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from arq.worker import Worker

log = logging.getLogger("akto_worker")

CLOSE_SECONDS = 10.0


def bound_close(worker_class: type[Worker] = Worker, seconds: float = CLOSE_SECONDS) -> None:
    """Give ``worker_class.close`` at most ``seconds``. Idempotent."""
    if getattr(worker_class.close, "bounded", False):
        return
    arq_close: Callable[[Worker], Awaitable[None]] = worker_class.close

    async def close(self: Worker) -> None:
        try:
            async with asyncio.timeout(seconds):
                await arq_close(self)
        except TimeoutError:
            log.warning(
                "Redis did not answer while the worker stopped; exiting after %gs without arq's last "
                "bookkeeping (jobs cut short run again once their in-progress keys expire)",
                seconds,
            )
            if self.on_shutdown is not None:
                with contextlib.suppress(Exception):
                    await self.on_shutdown(self.ctx)

    close.bounded = True  # type: ignore[attr-defined]
    worker_class.close = close  # type: ignore[method-assign]
