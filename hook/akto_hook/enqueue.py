"""The hook's one Redis write per record, bounded so Redis can never slow or fail a request.

When Redis fails or is slower than ``enqueue_timeout``, a breaker opens: from then on records go
straight to the local spool without waiting on Redis, and a background task probes Redis every
second. Once Redis answers, the spool is replayed in order and only then does the breaker close, so
records reach the queue in the order they were captured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest.queue import inbox_key, push
from akto_ingest.record import Record, now_ms

from . import metrics
from .spool import Spool

log = logging.getLogger("akto_hook")

PROBE_INTERVAL_SECONDS = 1.0
SPOOL_STATUS_KEY_SUFFIX = ":spool"
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class Enqueuer:
    """Pushes records onto the queue's inbox with a timeout; on trouble, spools them locally."""

    def __init__(self, redis_url: str, queue: str, timeout: float, spool_dir: Path, spool_max_bytes: int) -> None:
        self._queue = queue
        self._timeout = timeout
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=max(timeout, 1), socket_timeout=None)
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._breaker_open = self._spool.pending()  # an earlier process left records: replay first
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._tasks = [loop.create_task(self._spool.flush_forever()), loop.create_task(self._recover_forever())]

    async def put(self, record: Record) -> bool:
        """Queue one record; returns False when it had to be spooled (or, spool full, dropped)."""
        self._ensure_tasks()
        line = record.to_json()
        if not self._breaker_open:
            try:
                await asyncio.wait_for(push(self._redis, self._queue, line), self._timeout)
            except REDIS_ERRORS as exc:
                self._breaker_open = True
                metrics.ENQUEUE_FAILURES.inc()
                log.error(
                    "Redis unavailable (%s); spooling records to %s until it answers",
                    exc or "timeout",
                    self._spool.folder,
                    extra={"call_id": record.id},
                )
            else:
                metrics.ENQUEUED.inc()
                return True
        self._to_spool(line, record.id)
        return False

    def _to_spool(self, line: str, call_id: str) -> None:
        if self._spool.append(line):
            metrics.SPOOLED.inc()
            return
        metrics.SPOOL_DROPPED.inc()
        log.critical(
            "akto spool full (%d bytes at %s): record call_id=%s DROPPED; %d dropped so far",
            self._spool.max_bytes,
            self._spool.folder,
            call_id,
            self._spool.dropped,
            extra={"call_id": call_id},
        )

    async def _push_many(self, lines: list[str]) -> None:
        await self._redis.rpush(inbox_key(self._queue), *lines)

    async def _recover_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            if not self._breaker_open:
                continue
            try:
                await asyncio.wait_for(self._redis.ping(), 2)
                moved = await self._spool.replay(self._push_many)
                await self._report_spool()
            except REDIS_ERRORS:
                continue
            if moved:
                log.warning("Redis answers again; replayed %d spooled record(s)", moved)
            if not self._spool.pending():
                self._breaker_open = False

    async def _report_spool(self) -> None:
        """Leave this process's spool figures in Redis for ``akto-ingest status``."""
        status = {"bytes": self._spool.size_estimate(), "dropped": self._spool.dropped, "updated_ms": now_ms()}
        await self._redis.hset(self._queue + SPOOL_STATUS_KEY_SUFFIX, self._owner, json.dumps(status))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._spool.seal()
        await self._redis.aclose()
