"""Background loops a worker runs beside arq: claiming inbox records into jobs, and backlog gauges."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest.queue import Claimer, backlog, heartbeat_key, report
from akto_ingest.record import now_ms

from . import metrics
from .health import Rounds

log = logging.getLogger("akto_worker")

IDLE_POLL_SECONDS = 0.05
GAUGE_INTERVAL_SECONDS = 5.0


async def collect(claimer: Claimer, batch_size: int, rounds: Rounds) -> None:
    """Claim inbox records into jobs forever; sleeps briefly only when the inbox runs dry. Each claim,
    done or failed, is a round for ``/healthz``."""
    while True:
        try:
            moved = await claimer.claim()
        except (RedisError, OSError) as exc:
            rounds.completed()
            log.warning("cannot claim records from the inbox: %s", exc)
            await asyncio.sleep(1)
            continue
        rounds.completed()
        if moved < batch_size:
            await asyncio.sleep(IDLE_POLL_SECONDS)


async def report_backlog(redis: Redis, queue: str) -> None:
    """Every few seconds: the backlog gauges, and this worker's heartbeat for ``akto-ingest status``."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            waiting = await backlog(redis, queue)
            metrics.BACKLOG.labels("ready").set(waiting.ready_jobs)
            metrics.BACKLOG.labels("running").set(waiting.running_jobs)
            metrics.BACKLOG.labels("deferred").set(waiting.deferred_jobs)
            metrics.BACKLOG.labels("inbox").set(waiting.inbox)
            await report(redis, heartbeat_key(queue), me, str(now_ms()))
        except RedisError as exc:
            log.warning("cannot read the queue backlog: %s", exc)
        await asyncio.sleep(GAUGE_INTERVAL_SECONDS)
