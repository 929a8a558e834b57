"""Group commit to Redis: records captured while one ``RPUSH`` is in flight go out together in the next.

Under load that costs one round trip per batch instead of one per record, and it keeps records in
capture order. A caller waits for its group at most ``timeout``; from then on the writer owns the
record and either lands it in Redis or hands it to ``on_failure`` (which spools it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .. import metrics

log = logging.getLogger("akto_hook")

Entry = tuple[str, str]  # (record JSON, call id)
Push = Callable[[list[str]], Awaitable[None]]
OnFailure = Callable[[list[Entry], BaseException], None]


class GroupWriter:
    """Sends groups one at a time; ``paused`` holds them (the breaker is not closed)."""

    def __init__(self, push: Push, timeout: float, on_failure: OnFailure) -> None:
        self._push = push
        self._timeout = timeout
        self._on_failure = on_failure
        self._group: _Group | None = None
        self._wakeup = asyncio.Event()
        self._sending = asyncio.Lock()  # one push at a time, so groups land in capture order
        self.paused = False

    def add(self, loop: asyncio.AbstractEventLoop, line: str, call_id: str) -> asyncio.Future[bool]:
        """Join the next group; the future says True once the record is in Redis."""
        group = self._group
        if group is None:
            group = self._group = _Group(loop, self._timeout)
            if not self.paused:
                self._wakeup.set()
        group.records.append((line, call_id))
        return group.done

    def take(self) -> list[Entry]:
        """Remove the group not yet sent (its callers are answered False) and return its records."""
        group, self._group = self._group, None
        if group is None:
            return []
        group.resolve(False)
        return group.records

    def abandon(self) -> list[Entry]:
        """Like :meth:`take` without answering callers: for when the event loop is gone."""
        group, self._group = self._group, None
        return group.records if group else []

    def resume(self) -> None:
        self.paused = False
        self._wakeup.set()

    def rebind(self) -> None:
        """A new event loop: the wake-up event of the old one cannot be awaited there."""
        self._wakeup = asyncio.Event()
        self._sending = asyncio.Lock()
        if self._group is not None:
            self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send waiting groups until none is left (or the writer is paused)."""
        async with self._sending:
            while self._group is not None and not self.paused:
                group, self._group = self._group, None
                delivered = False
                try:
                    delivered = await self._send(group.records)
                finally:
                    # A flush cancelled mid-push (close's time limit, shutdown) answers the group's
                    # callers now, not when its timer fires; its records went to ``on_failure``.
                    group.resolve(delivered)

    async def _send(self, batch: list[Entry]) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._push([line for line, _ in batch])
        except asyncio.CancelledError:
            # Cancelled mid-push (shutdown): the records are not known to be in Redis; keep them.
            self._on_failure(batch, TimeoutError("cancelled"))
            raise
        except Exception as exc:  # anything at all: the batch must end up somewhere
            self._on_failure(batch, exc)
            return False
        metrics.ENQUEUED.inc(len(batch))
        return True


class _Group:
    """One future and one timer per group, not per record, so under load a put costs an append."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.records: list[Entry] = []
        self.done: asyncio.Future[bool] = loop.create_future()
        self._timer = loop.call_later(timeout, self._settle, False)

    def _settle(self, value: bool) -> None:
        if not self.done.done():
            self.done.set_result(value)

    def resolve(self, delivered: bool) -> None:
        self._timer.cancel()
        self._settle(delivered)
