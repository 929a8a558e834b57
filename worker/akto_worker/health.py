"""The worker's HTTP side port: Prometheus metrics and the liveness/readiness probes.

``/healthz`` (liveness) says whether this process still works: its event loop keeps time, its
collector task is running, and arq's poll and the collector each complete a round within the round
budget. It sends nothing to Redis itself, but a round waits on Redis, retries included: a short
outage or failover leaves it at 200, a Redis that has been frozen or away for longer than the budget
does not. ``/readyz`` (readiness) adds a Redis PING, so a worker that cannot reach Redis is reported
as not ready at once.
"""

from __future__ import annotations

import asyncio
import math
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

TICK_SECONDS = 1.0
# A loop that wakes a timer this late is blocked or starved: jobs, the collector and arq's own
# polling all wait behind it. Kubernetes probes fail first on their own timeout when it is blocked
# outright; this catches a loop that still answers but no longer keeps up.
MAX_LOOP_LAG_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 2.0
# arq's ``ctx`` key of the poll's :class:`Rounds`; the patched poll loop (claims.py) reports there.
POLL_ROUNDS = "akto_poll_rounds"


class Rounds:
    """When a loop last completed a round; one that has not for ``budget`` seconds is stuck.

    A round that ends in an error counts: the loop goes on and tries again. One that never ends
    (a command waiting on a server that stopped answering) does not.
    """

    def __init__(self, name: str, budget: float) -> None:
        self.name = name
        self.budget = budget
        self._completed = time.monotonic()

    def completed(self) -> None:
        self._completed = time.monotonic()

    def problem(self) -> str | None:
        waited = time.monotonic() - self._completed
        if waited <= self.budget:
            return None
        return f"{self.name} has not completed a round in {waited:.1f}s (budget {self.budget:g}s)"


class Liveness:
    """Watches this process: the lateness of the event loop's timers, the collector task, and the
    rounds of arq's poll and of the collector."""

    def __init__(
        self,
        collector: asyncio.Task[None],
        rounds: tuple[Rounds, ...] = (),
        *,
        tick: float = TICK_SECONDS,
        max_lag: float = MAX_LOOP_LAG_SECONDS,
    ) -> None:
        self._collector = collector
        self._rounds = rounds
        self._tick = tick
        self._max_lag = max_lag
        self._stall = 0.0
        self._stall_seen = -math.inf

    async def watch_loop(self) -> None:
        """Forever: sleep one tick and note a wake-up later than ``max_lag``."""
        while True:
            due = time.monotonic() + self._tick
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            if now - due > self._max_lag:
                self._stall, self._stall_seen = now - due, now

    def problems(self) -> list[str]:
        """Why this worker is not alive; empty when it is.

        A stall is reported for ``max_lag`` seconds after it ends, so the probe that was kept
        waiting by it still sees it; a loop that stays starved is reported on every probe.
        """
        found = []
        if self._collector.done():
            error = None if self._collector.cancelled() else self._collector.exception()
            found.append(f"collector task ended ({error!r})" if error else "collector task ended")
        found.extend(problem for rounds in self._rounds if (problem := rounds.problem()))
        if time.monotonic() - self._stall_seen < self._max_lag:
            found.append(f"event loop {self._stall:.1f}s late (limit {self._max_lag:g}s)")
        return found


async def serve(redis: Redis, port: int, liveness: Liveness, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` from the worker's own event loop,
    so a blocked loop fails the probes as it should."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        problems = liveness.problems()
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = liveness.problems()
        try:
            await asyncio.wait_for(redis.ping(), timeout=PING_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            problems.append(f"redis: {exc or type(exc).__name__}")
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
