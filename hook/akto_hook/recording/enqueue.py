"""The hook's one Redis write per record, bounded so Redis can never slow or fail a request.

``Enqueuer`` is a thin façade over three small units: the group-commit writer (``writer.py``), the
spool (``spool.py``) and the breaker with its replay (``recovery.py``). Its background tasks are
supervised (``supervise.py``): they start as soon as an event loop runs (inside the LiteLLM proxy:
when the guardrail is built, at proxy start), and ``close`` runs at proxy shutdown.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import sys
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from akto_ingest.connections import REDIS_TIMEOUT_SECONDS, bounded, redis_client
from akto_ingest.record import Record

from .recovery import Recovery, State
from .rpush import Pusher
from .spool import Spool
from .supervise import supervised
from .writer import GroupWriter

log = logging.getLogger("akto_hook")

CLOSE_TIMEOUT_SECONDS = 5.0


class Enqueuer:
    """Pushes records onto the queue's inbox with a timeout; on trouble, spools them locally.

    ``put`` returns once its record is in Redis, or after ``enqueue_timeout`` at most; from then on
    the writer owns the record and either lands it in Redis or spools it. ``put`` never raises.
    """

    def __init__(
        self,
        redis_url: str,
        queue: str,
        timeout: float,
        spool_dir: Path,
        spool_max_bytes: int,
        *,
        redis_timeout: float = REDIS_TIMEOUT_SECONDS,
    ) -> None:
        self._queue = queue
        self._timeout = timeout
        # The writer and the breaker bound their own waits (enqueue_timeout, the probe's 1 s); the
        # socket timeout also bounds the Sentinel lookups and anything that runs without one.
        self._redis = redis_client(redis_url, **bounded(redis_timeout, connect_timeout=max(timeout, 1)))
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._pusher = Pusher(self._redis, queue)
        self._writer = GroupWriter(self._push, timeout, self._redis_failed)
        owner = f"{socket.gethostname()}:{os.getpid()}"
        self._recovery = Recovery(self._redis, queue, self._spool, self._writer, self._push, owner)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.start()

    @property
    def breaker_open(self) -> bool:
        """True while Redis is treated as unavailable (records go to, or wait on, the spool)."""
        return self._recovery.state is not State.CLOSED

    def start(self) -> bool:
        """Start the background tasks on the running event loop; False when none runs in this thread.

        Called at construction and by every ``put`` (the fallback for an Enqueuer built before any
        loop runs). Starting replays at once what an earlier process spooled.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._loop is loop or self._closed:
            return True
        self._loop = loop
        _LIVE.add(self)
        self._writer.rebind()
        self._tasks = [
            loop.create_task(supervised("writer", self._writer.run_forever)),
            loop.create_task(supervised("spool", self._spool.maintain_forever)),
            loop.create_task(supervised("recovery", self._recovery.run_forever)),
        ]
        _close_at_proxy_shutdown(self)
        return True

    async def put(self, record: Record) -> bool:
        """Queue one record; True once it is in Redis, False when it was spooled, dropped or is pending."""
        try:
            return await self._put(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("akto record call_id=%s could not be queued", record.id, extra={"call_id": record.id})
            return False

    async def _put(self, record: Record) -> bool:
        line = record.to_json()
        if self._closed:
            self._spool.append_blocking(line, record.id)
            return False
        self.start()
        if self._recovery.spooling:
            self._recovery.spool(line, record.id)
            return False
        loop = self._loop or asyncio.get_running_loop()
        # The group's one future is every member's answer: awaited bare, a caller LiteLLM cancels (a
        # during_call check it drops, a client that left, shutdown) would cancel it for the whole
        # group. Shielded, only that caller stops waiting; the writer still owns its record.
        return await asyncio.shield(self._writer.add(loop, line, record.id))

    def _redis_failed(self, batch: list[tuple[str, str]], exc: BaseException) -> None:
        self._recovery.redis_failed(batch, exc)

    async def _push(self, lines: list[str]) -> None:
        await self._push_many(lines)

    async def _push_many(self, lines: list[str]) -> None:
        await self._pusher(lines)

    async def close(self) -> None:
        """Flush the group in flight and the spool to disk, stop the tasks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self._writer.paused:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await self._writer.flush()
        # Anything still held (breaker draining, or a flush cut short) goes to disk.
        for line, call_id in self._writer.take():
            self._spool.append(line, call_id)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_SECONDS)
        self._tasks = []
        await self._spool.close()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    def spool_leftovers(self) -> None:
        """At interpreter exit without ``close`` (an SDK script whose loop has ended): write what was
        captured but never sent to the spool, synchronously. The next process replays it."""
        if self._closed:
            return
        self._closed = True
        for line, call_id in self._writer.abandon():
            self._spool.append_blocking(line, call_id)
        self._spool.flush_blocking()


_LIVE: weakref.WeakSet[Enqueuer] = weakref.WeakSet()


@atexit.register
def _spool_leftovers_at_exit() -> None:
    for enqueuer in list(_LIVE):
        try:
            enqueuer.spool_leftovers()
        except Exception:
            log.exception("akto enqueuer could not spool its records at exit")


def _close_at_proxy_shutdown(enqueuer: Enqueuer) -> None:
    """Make LiteLLM's proxy close this Enqueuer when it shuts down.

    LiteLLM 1.108.7 offers guardrails and callbacks no shutdown hook, and uvicorn re-raises SIGTERM
    once its lifespan is over, so neither atexit nor task cancellation ever runs. The proxy's
    lifespan teardown does look up ``proxy_server.proxy_shutdown_event`` at call time, after open
    requests have drained: wrapping it closes every Enqueuer first. Outside the proxy it is a no-op.
    """
    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    original = getattr(proxy_server, "proxy_shutdown_event", None)
    if proxy_server is None or original is None or getattr(original, "_closes_akto_enqueuers", False):
        return

    async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> None:
        try:
            await close_all()
        finally:
            await original(*args, **kwargs)

    wrapper: Callable[..., Awaitable[None]] = proxy_shutdown_event
    wrapper._closes_akto_enqueuers = True  # type: ignore[attr-defined]
    proxy_server.proxy_shutdown_event = wrapper  # type: ignore[attr-defined]


async def close_all() -> None:
    """Close every live Enqueuer of this process (the proxy's shutdown calls this)."""
    enqueuers = list(_LIVE)
    results = await asyncio.gather(*(_close_on_its_loop(e) for e in enqueuers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            log.error("akto enqueuer did not close cleanly: %r", result)
    if enqueuers:
        log.info("akto hook flushed its records at shutdown (%d enqueuer(s))", len(enqueuers))


async def _close_on_its_loop(enqueuer: Enqueuer) -> None:
    """Close on the loop the Enqueuer runs on. The callback's lives on its writer thread's loop; closed
    from the proxy's, its flush took the writer's lock and connection from a second thread (the
    writer's task then failed) and its tasks could not be awaited (shutdown stalled 10 s)."""
    loop = enqueuer._loop
    if loop is None or loop is asyncio.get_running_loop() or not loop.is_running():
        await enqueuer.close()
        return
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(enqueuer.close(), loop))
