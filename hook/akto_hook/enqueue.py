"""The hook's one Redis write per record, bounded so Redis can never slow or fail a request.

When Redis fails or is slower than ``enqueue_timeout``, a breaker opens: from then on records go
straight to the local spool without waiting on Redis, and a background task probes Redis every
second. Once Redis answers, the spool is replayed in order and only then does the breaker close, so
records reach the queue in the order they were captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path

from redis.exceptions import RedisError

from akto_ingest.connections import redis_client
from akto_ingest.queue import push, spool_status_key
from akto_ingest.record import Record, now_ms

from . import metrics
from .spool import Spool

log = logging.getLogger("akto_hook")

PROBE_INTERVAL_SECONDS = 1.0
SPOOL_REPORT_EVERY = 10  # probe intervals between spool reports while Redis is healthy
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class Enqueuer:
    """Pushes records onto the queue's inbox with a timeout; on trouble, spools them locally.

    Writes are group-committed: records captured while a push is in flight go out together in the
    next single ``RPUSH``. Under load that costs one round trip per batch instead of one per record,
    and it keeps records in capture order. ``put`` returns once its record is in Redis, or after
    ``enqueue_timeout`` at most; from then on the flusher owns the record and either lands it in
    Redis or spools it.
    """

    def __init__(self, redis_url: str, queue: str, timeout: float, spool_dir: Path, spool_max_bytes: int) -> None:
        self._queue = queue
        self._timeout = timeout
        self._redis = redis_client(redis_url, socket_connect_timeout=max(timeout, 1), socket_timeout=None)
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._breaker_open = self._spool.pending()  # an earlier process left records: replay first
        self._group: _Group | None = None
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def _ensure_tasks(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._tasks = [
                loop.create_task(self._flush_forever()),
                loop.create_task(self._spool.flush_forever()),
                loop.create_task(self._recover_forever()),
            ]
        return loop

    async def put(self, record: Record) -> bool:
        """Queue one record; True once it is in Redis, False when it was spooled or is still pending."""
        loop = self._ensure_tasks()
        line = record.to_json()
        if self._breaker_open:
            self._to_spool(line, record.id)
            return False
        group = self._group
        if group is None:
            group = self._group = _Group(loop, self._timeout)
            self._wakeup.set()
        group.records.append((line, record.id))
        return await group.done

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._group is not None:
                group, self._group = self._group, None
                group.resolve(await self._send(group.records))

    async def _send(self, batch: list[tuple[str, str]]) -> bool:
        """Push one group; on failure open the breaker and spool it. True when Redis has it."""
        if not self._breaker_open:
            try:
                await asyncio.wait_for(self._push_many([line for line, _ in batch]), self._timeout)
            except REDIS_ERRORS as exc:
                self._breaker_open = True
                metrics.ENQUEUE_FAILURES.inc(len(batch))
                log.error(
                    "Redis unavailable (%s); spooling records to %s until it answers",
                    exc or "timeout",
                    self._spool.folder,
                    extra={"call_id": batch[0][1]},
                )
            else:
                metrics.ENQUEUED.inc(len(batch))
                return True
        for line, call_id in batch:
            self._to_spool(line, call_id)
        return False

    def _to_spool(self, line: str, call_id: str) -> None:
        if self._spool.append(line):
            metrics.SPOOLED.inc()
            return
        metrics.SPOOL_DROPPED.inc()
        log.critical(
            "akto %s at %s: record call_id=%s DROPPED; %d dropped so far",
            self._spool.last_problem,
            self._spool.folder,
            call_id,
            self._spool.dropped,
            extra={"call_id": call_id},
        )

    async def _push_many(self, lines: list[str]) -> None:
        await push(self._redis, self._queue, lines)

    async def _recover_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            ticks += 1
            if not self._breaker_open:
                if ticks % SPOOL_REPORT_EVERY == 0:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await asyncio.wait_for(self._report_spool(), 2)
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
        await self._redis.hset(spool_status_key(self._queue), self._owner, json.dumps(status))  # type: ignore[misc]  # redis-py types sync|async

    async def close(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            group.resolve(await self._send(group.records))
        for task in self._tasks:
            task.cancel()
        self._spool.seal()
        await self._redis.aclose()


class _Group:
    """Records captured while the previous push was in flight; they go out in one RPUSH.

    One future and one timer per group, not per record, so under load a put costs an append.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.records: list[tuple[str, str]] = []
        self.done: asyncio.Future[bool] = loop.create_future()
        self._timer = loop.call_later(timeout, self._settle, False)

    def _settle(self, value: bool) -> None:
        if not self.done.done():
            self.done.set_result(value)

    def resolve(self, delivered: bool) -> None:
        self._timer.cancel()
        self._settle(delivered)
