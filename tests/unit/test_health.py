"""The worker's probes: /healthz is this process's liveness (never Redis), /readyz adds Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from akto_worker import health
from akto_worker.collector import collect
from tests.stack import free_port

Serve = Callable[[Redis, health.Liveness], Awaitable[str]]


async def _forever() -> None:
    await asyncio.Event().wait()


async def _crash() -> None:
    raise RuntimeError("collector bug")


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(redis: Redis, liveness: health.Liveness) -> str:
        port = free_port()
        runners.append(await health.serve(redis, port, liveness, host="127.0.0.1"))
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(_forever())
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, timeout=10)


async def test_alive_and_ready_with_redis(serve: Serve, real_redis: Any, collector: asyncio.Task[None]) -> None:
    base = await serve(real_redis, health.Liveness(collector))
    assert (await _get(f"{base}/healthz")).status_code == 200
    assert (await _get(f"{base}/readyz")).status_code == 200


async def test_redis_down_keeps_the_worker_alive_but_not_ready(serve: Serve, collector: asyncio.Task[None]) -> None:
    unreachable = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        base = await serve(unreachable, health.Liveness(collector))
        alive = await _get(f"{base}/healthz")
        ready = await _get(f"{base}/readyz")
    finally:
        await unreachable.aclose()
    assert alive.status_code == 200, "a Redis outage must not restart every worker"
    assert ready.status_code == 503
    assert "redis" in ready.text


async def test_dead_collector_fails_liveness(serve: Serve, real_redis: Any) -> None:
    task = asyncio.create_task(_crash())
    with contextlib.suppress(RuntimeError):
        await task
    base = await serve(real_redis, health.Liveness(task))
    alive = await _get(f"{base}/healthz")
    assert alive.status_code == 503
    assert "collector task ended" in alive.text and "collector bug" in alive.text
    assert (await _get(f"{base}/readyz")).status_code == 503


async def test_cancelled_collector_fails_liveness(collector: asyncio.Task[None]) -> None:
    liveness = health.Liveness(collector)
    assert liveness.problems() == []
    collector.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await collector
    assert liveness.problems() == ["collector task ended"]


async def test_a_stalled_event_loop_fails_liveness_until_it_keeps_time_again(collector: asyncio.Task[None]) -> None:
    liveness = health.Liveness(collector, tick=0.05, max_lag=1.0)
    watcher = asyncio.create_task(liveness.watch_loop())
    try:
        await asyncio.sleep(0.2)
        assert liveness.problems() == []
        time.sleep(2.5)  # noqa: ASYNC251 -- the point: a blocking call stalls the loop
        await asyncio.sleep(0.1)
        [problem] = liveness.problems()
        assert problem.startswith("event loop ") and "late" in problem
        deadline = time.monotonic() + 30
        while liveness.problems() and time.monotonic() < deadline:  # noqa: ASYNC110 -- polls a clock-based state
            await asyncio.sleep(0.1)
        assert liveness.problems() == []
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_a_loop_that_completes_no_round_within_its_budget_fails_liveness(
    collector: asyncio.Task[None],
) -> None:
    rounds = health.Rounds("arq's poll", 0.3)
    liveness = health.Liveness(collector, (rounds,))
    assert liveness.problems() == []
    await asyncio.sleep(0.5)
    [problem] = liveness.problems()
    assert problem.startswith("arq's poll has not completed a round in ") and "(budget 0.3s)" in problem
    rounds.completed()
    assert liveness.problems() == []


class _Claimer:
    """A claimer whose claims fail, then hang (a server that stopped answering)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def claim(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise RedisConnectionError("refused")
        await asyncio.Event().wait()
        return 0


_real_sleep = asyncio.sleep


def _no_wait(sleep: Callable[[float], Awaitable[None]]) -> Callable[[float], Awaitable[None]]:
    """The collector's 1 s pause after a failed claim, cut to nothing."""

    async def no_wait(_: float) -> None:
        await sleep(0)

    return no_wait


async def test_failed_claims_are_rounds_a_hung_claim_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait(asyncio.sleep))
    rounds = health.Rounds("the collector", 0.3)
    claimer = _Claimer(failures=3)
    task = asyncio.create_task(collect(claimer, 10, rounds))  # type: ignore[arg-type]
    try:
        await _real_sleep(0.2)
        assert claimer.calls == 4 and rounds.problem() is None
        await _real_sleep(0.3)
        assert rounds.problem() is not None and not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
