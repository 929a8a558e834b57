"""The breaker between the hook and Redis, and the replay that closes it.

Closed: records go to the group writer. When a push fails or times out the breaker opens: that
group, the one waiting behind it and every later record go straight to the spool, in capture order.
A probe pings Redis every ``PROBE_INTERVAL_SECONDS``; once it answers the spool is replayed (each
chunk within ``REPLAY_TIMEOUT_SECONDS``). To close under load the breaker passes through
*draining*: new records gather in memory while the last, short segment is replayed, and then they
follow it to Redis. So the breaker closes however fast records keep coming, and order is kept.
When the spool refuses records (disk full or failing) they wait in memory, up to
``HOLD_MAX_BYTES``, and follow the spool to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest.queue import report, spool_status_key
from akto_ingest.record import now_ms

from .. import metrics
from .spool import Push, Spool
from .writer import Entry, GroupWriter

log = logging.getLogger("akto_hook")

PROBE_INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0
REPLAY_TIMEOUT_SECONDS = 5.0
# The draining step replays at most about this much of the current segment while new records wait.
DRAIN_MAX_BYTES = 1024 * 1024
# What the spool refuses (disk full or failing) waits in memory for Redis, up to this much.
HOLD_MAX_BYTES = 16 * 1024 * 1024
HOUSEKEEPING_EVERY = 20  # probe intervals between spool reports / dead-process scans while healthy
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    DRAINING = "draining"


class Recovery:
    """Owns the breaker state; the Enqueuer asks it where a record goes."""

    def __init__(self, redis: Redis, queue: str, spool: Spool, writer: GroupWriter, push: Push, owner: str) -> None:
        self._redis = redis
        self._queue = queue
        self._spool = spool
        self._writer = writer
        self._push = push
        self._owner = owner
        self.state = State.CLOSED
        self._ticks = 0
        self._holding = False  # the spool refused a record: later ones wait in memory too, in order
        self._held_bytes = 0

    @property
    def spooling(self) -> bool:
        return self.state is State.OPEN

    def redis_failed(self, batch: list[Entry], exc: BaseException) -> None:
        """A group could not be pushed: open the breaker and spool it, then the group behind it.

        Synchronous on purpose: no record captured later can reach the spool before these.
        """
        metrics.ENQUEUE_FAILURES.inc(len(batch))
        if self.state is State.CLOSED:
            log.error(
                "Redis unavailable (%s); spooling records to %s until it answers",
                exc or "timeout",
                self._spool.folder,
                extra={"call_id": batch[0][1] if batch else None},
            )
        self._open()
        for line, call_id in batch + self._writer.take():
            self.spool(line, call_id)

    def spool(self, line: str, call_id: str) -> None:
        """While the breaker is open: to the spool. What the spool refuses waits in memory (bounded)
        and goes to Redis right after the spool; past the bound it is dropped, loudly."""
        if not self._holding:
            problem = self._spool.offer(line, call_id)
            if problem is None:
                return
            self._holding = True
            log.critical(
                "akto %s at %s: holding records in memory (up to %d bytes) until Redis answers",
                problem,
                self._spool.folder,
                HOLD_MAX_BYTES,
            )
        if self._held_bytes + len(line) > HOLD_MAX_BYTES:
            self._spool.drop(call_id, "the spool refused it and the memory hold is full")
            return
        self._held_bytes += len(line)
        self._writer.add(asyncio.get_running_loop(), line, call_id)

    def _open(self) -> None:
        self.state = State.OPEN
        self._writer.paused = True
        metrics.BREAKER_OPEN.set(1)

    async def run_forever(self) -> None:
        """Probe and replay; also replay what earlier processes left, at start and now and then."""
        await self._startup()
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            await self.tick()

    async def _startup(self) -> None:
        """A restarted proxy replays what an earlier one left, at once, not at its first request.
        If Redis cannot take it yet, this process spools behind it until Redis answers."""
        await self._spool.check_folder()
        try:
            await self._replay_dead()
        except REDIS_ERRORS as exc:
            if self.state is State.CLOSED:
                log.error("Redis unavailable (%s) at start; spooling to %s", exc or "timeout", self._spool.folder)
                self._open()

    async def tick(self) -> None:
        self._ticks += 1
        if self.state is State.CLOSED:
            if self._ticks % HOUSEKEEPING_EVERY == 0:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._replay_dead()
                    await self._report()
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await self._redis.ping()
            moved = await self._close()
        except REDIS_ERRORS as exc:
            log.debug("akto spool replay not done yet: %s", exc or "timeout")
            return
        log.warning("Redis answers again; replayed %d spooled record(s); breaker closed", moved)
        with contextlib.suppress(*REDIS_ERRORS):
            await self._report()

    async def _replay_dead(self) -> int:
        moved = await self._spool.replay_dead(self._push, REPLAY_TIMEOUT_SECONDS)
        if moved:
            log.warning("replayed %d record(s) an earlier process spooled at %s", moved, self._spool.folder)
        return moved

    async def _close(self) -> int:
        """Replay everything, then close. Raises (breaker still open) when Redis fails meanwhile."""
        moved = await self._replay_dead()
        # Records keep coming into the active segment meanwhile; they are replayed below.
        moved += await self._spool.replay_own(self._push, REPLAY_TIMEOUT_SECONDS)
        while self._spool.active_bytes > DRAIN_MAX_BYTES and await self._spool.rotate():
            moved += await self._spool.replay_own(self._push, REPLAY_TIMEOUT_SECONDS)
        self.state = State.DRAINING  # new records now wait in the writer's (paused) group
        try:
            await self._spool.seal()
            moved += await self._spool.replay_own(self._push, REPLAY_TIMEOUT_SECONDS)
        except BaseException:
            self._open()
            if not self._holding:
                for line, call_id in self._writer.take():
                    self.spool(line, call_id)
            raise
        self.state = State.CLOSED
        self._holding = False
        self._held_bytes = 0
        metrics.BREAKER_OPEN.set(0)
        self._writer.resume()
        return moved

    async def _report(self) -> None:
        """Leave this process's spool figures in Redis for ``akto-ingest status``."""
        status = {"bytes": self._spool.size_estimate(), "dropped": self._spool.dropped, "updated_ms": now_ms()}
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await report(self._redis, spool_status_key(self._queue), self._owner, json.dumps(status))
