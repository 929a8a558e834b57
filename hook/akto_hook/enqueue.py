"""The hook's one Redis write per record, bounded so Redis can never slow or fail a request."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest.queue import push
from akto_ingest.record import Record

from . import metrics

log = logging.getLogger("akto_hook")


class Enqueuer:
    """Pushes records onto the queue's inbox with a timeout; a failure is logged and counted."""

    def __init__(self, redis_url: str, queue: str, timeout: float) -> None:
        self._queue = queue
        self._timeout = timeout
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)

    async def put(self, record: Record) -> bool:
        """Queue one record; returns False (after logging) when Redis did not take it in time."""
        try:
            await asyncio.wait_for(push(self._redis, self._queue, record.to_json()), self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.ENQUEUE_FAILURES.inc()
            log.error("akto record not queued call_id=%s: Redis unavailable (%s)", record.id, exc or "timeout")
            return False
        metrics.ENQUEUED.inc()
        return True

    async def close(self) -> None:
        await self._redis.aclose()
