"""Keep arq's worker alive when Redis drops its connections, in particular while it claims a job.

arq 0.28 claims a job with ``WATCH in-progress-key; EXISTS; ZSCORE; MULTI; PSETEX; EXEC`` in
``Worker.start_jobs``. It expects a ``WatchError`` only from ``EXEC`` (another worker won the race).
But redis-py raises ``WatchError`` from any command of the pipeline that meets a broken connection
while a key is watched, and arq lets that escape from its poll loop: the worker then stops with
exit status 1 (python-arq/arq#498). A Redis restart or failover, or a connection closed by Redis or
by the network, triggers it whenever it lands between ``WATCH`` and ``EXEC``; the fault suite's
Redis restart did, and the worker it killed was found dead at the next stop.

A claim that breaks this way claimed nothing: the ``in-progress`` key is written only by ``EXEC``.
So it is handled as arq handles a lost race, and the job stays queued for the next poll.

Each poll iteration that ends, with or without such a drop, is reported as a completed round to the
worker's :class:`~akto_worker.health.Rounds` (in arq's ``ctx``), which ``/healthz`` watches.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from .health import POLL_ROUNDS

log = logging.getLogger("akto_worker")

_DROPS = (WatchError, RedisConnectionError, RedisTimeoutError, OSError)


def survive_connection_drops(worker_class: type[Worker] = Worker) -> None:
    """Make ``worker_class``'s poll loop carry on, instead of ending the worker, when Redis drops a
    connection under it; a claim that broke leaves its job queued. Idempotent."""
    if getattr(worker_class.start_jobs, "survives_connection_drops", False):
        return
    arq_start_jobs: Callable[[Worker, list[bytes]], Awaitable[None]] = worker_class.start_jobs
    arq_poll_iteration: Callable[[Worker], Awaitable[None]] = worker_class._poll_iteration

    async def start_jobs(self: Worker, job_ids: list[bytes]) -> None:
        try:
            await arq_start_jobs(self, job_ids)
        except _DROPS as exc:
            # arq counted the job and took a slot for it before the claim broke; give both back, as
            # it does itself when it loses the race at EXEC.
            self.job_counter -= 1
            self.sem.release()
            log.warning("claiming a job failed on a dropped Redis connection (%s); it stays queued", exc)

    async def poll_iteration(self: Worker) -> None:
        # redis-py retries a command whose connection drops, but not a connection that drops again
        # while it is re-established (its SELECT): arq's poll would end the worker on that too.
        try:
            await arq_poll_iteration(self)
        except _DROPS as exc:
            log.warning("polling the queue failed on a dropped Redis connection (%s); polling on", exc)
        rounds = self.ctx.get(POLL_ROUNDS)
        if rounds is not None:
            rounds.completed()

    setattr(start_jobs, "survives_connection_drops", True)  # noqa: B010
    setattr(worker_class, "start_jobs", start_jobs)  # noqa: B010
    setattr(worker_class, "_poll_iteration", poll_iteration)  # noqa: B010
