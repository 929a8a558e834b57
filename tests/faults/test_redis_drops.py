"""A worker rides out Redis dropping its connections at any moment, including in the middle of arq's
job claim (``WATCH`` ... ``EXEC``), where arq 0.28 would let the error end the worker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from arq.connections import create_pool
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest.connections import arq_redis_settings as redis_settings
from akto_worker.claims import survive_connection_drops
from tests.stack import new_redis

from .conftest import RESULTS, close_worker

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CLAIMS_BROKEN = 3
CLAIM_BROKEN_LOG = "claiming a job failed on a dropped Redis connection"


async def test_worker_survives_redis_dropping_its_connections_mid_claim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    survive_connection_drops()
    caplog.set_level(logging.WARNING, "akto_worker")
    # Private: dropping every client of the shared Redis would hit other tests.
    server = new_redis(tmp_path)
    runs: list[int] = []

    async def job(ctx: dict[str, Any], n: int) -> None:
        runs.append(n)

    worker = Worker(
        functions=[func(job, name="job")],
        queue_name="drops",
        redis_settings=redis_settings(server.url),
        handle_signals=False,
        poll_delay=0.005,
        max_jobs=4,
        keep_result=0,
        # A job whose run broke on a dropped connection is claimed again once this (+ 10 s) is over.
        job_timeout=2,
        max_tries=1_000_000,
    )
    producer = await create_pool(redis_settings(server.url), default_queue_name="drops")
    admin = Redis.from_url(server.url)
    enqueued = 0

    async def drop_connections() -> None:
        # Closes every connection but this one, as a restart or failover does, wherever the worker
        # happens to be: in the middle of a claim too.
        while True:
            await admin.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.02)

    run = asyncio.create_task(worker.async_run())
    dropper = asyncio.create_task(drop_connections())
    try:
        async with asyncio.timeout(120):
            while caplog.text.count(CLAIM_BROKEN_LOG) < CLAIMS_BROKEN:
                assert not run.done(), run.exception()
                try:
                    # arq's enqueue answers None, having stored nothing, when its own WATCH broke.
                    if await producer.enqueue_job("job", enqueued) is not None:
                        enqueued += 1
                except RedisError:
                    pass  # our own connection was dropped too
            dropper.cancel()
            while len(set(runs)) < enqueued:
                assert not run.done(), run.exception()
                await asyncio.sleep(0.05)
    finally:
        dropper.cancel()
        run.cancel()
        await asyncio.gather(run, dropper, return_exceptions=True)
        try:
            await close_worker(worker)
            await producer.aclose()
            await admin.aclose()
        finally:
            server.stop()  # even when a failed worker cannot close cleanly
    RESULTS.append(
        {
            "fault": "Redis drops worker connections every 20 ms (jobs)",
            "produced": enqueued,
            "delivered": len(set(runs)),
            "dead_lettered": 0,
            "duplicates": len(runs) - len(set(runs)),
            "lost": enqueued - len(set(runs)),
            "p99_ms": "-",
            "requests_ok": f"{caplog.text.count(CLAIM_BROKEN_LOG)} claims broken",
        }
    )
    assert worker.jobs_failed == 0
