"""Jobs end inside arq's limits: a real arq ``Worker`` (in this process, so the faults can be timed to
the moment) runs our job functions against a fake Akto and a private Redis, at a tenth of the usual
scale. arq deletes a job that reaches its timeout, records and all, so each fault here would lose the
batch if the job ran past it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest import dlq
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, WorkerConfig
from akto_ingest.connections import arq_redis_settings as redis_settings
from akto_ingest.queue import add_batch, decode_job, encode_job, enqueue_batch
from akto_ingest.record import Record
from akto_ingest.wire import Limits, encode, envelope, with_publish_flag
from akto_worker import deadline, delivery, jobs
from akto_worker.deadline import job_limits
from akto_worker.delivery import Deliverer
from akto_worker.state import WorkerState
from tests.fake_akto import FakeAkto
from tests.stack import RedisServer, new_redis

from .conftest import RESULTS, close_worker

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# About a tenth of the usual scale: the delivery timeout is 0.5 s, a job's delivery deadline 1.5 s and
# arq's job timeout 3 s, where production has 10 s, 30 s and 45 s.
DELIVERY_TIMEOUT = 0.5
SETTLE_SECONDS = 60
AKTO = AktoSettings.load({"akto_base_url": "http://akto", "akto_api_key": "k"}, env={})


@pytest.fixture(autouse=True)
def scaled_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline, "MIN_DELIVERY_SECONDS", 0.0)
    monkeypatch.setattr(deadline, "PERSIST_SECONDS", 0.5)
    monkeypatch.setattr(deadline, "MARGIN_SECONDS", 0.5)
    monkeypatch.setattr(jobs, "RERUN_DEFER_SECONDS", 1)
    assert job_limits(DELIVERY_TIMEOUT).job_timeout == 3


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    log_dir = tmp_path_factory.mktemp("job-deadline")
    server = new_redis(log_dir, appendonly=True)
    try:
        yield server, log_dir
    finally:
        server.stop()


@pytest_asyncio.fixture
async def akto() -> AsyncIterator[FakeAkto]:
    async with FakeAkto(api_key="k") as fake:
        yield fake


@dataclass
class Run:
    worker: Worker
    redis: Redis
    queue: str


async def start_worker(akto: FakeAkto, redis_url: str, **config: Any) -> tuple[Run, asyncio.Task[None]]:
    """An arq worker configured as ``settings.py`` configures it: our job function and serializer,
    the job timeout from ``job_limits``, and the production Redis client (retrying ~5 minutes)."""
    queue = f"akto:deadline:{uuid.uuid4().hex[:8]}"
    settings = AktoSettings.load({"akto_base_url": akto.url, "akto_api_key": "k"}, env={})
    worker_config = WorkerConfig.load(
        {"delivery_timeout": DELIVERY_TIMEOUT, "backoff_base": 0.2, "backoff_max": 0.5, **config}, env={}
    )
    client = AktoClient(settings, timeout=DELIVERY_TIMEOUT)
    limits = job_limits(DELIVERY_TIMEOUT)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["akto"] = WorkerState(Deliverer(client, settings, worker_config), worker_config, queue)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await client.close()

    worker = Worker(
        functions=[func(jobs.deliver, name="deliver", timeout=limits.job_timeout)],
        queue_name=queue,
        redis_settings=redis_settings(redis_url),
        job_timeout=limits.job_timeout,
        max_tries=1_000_000,
        keep_result=0,
        poll_delay=0.05,
        job_serializer=encode_job,
        job_deserializer=decode_job,
        retry_jobs=True,
        handle_signals=False,
        on_startup=startup,
        on_shutdown=shutdown,
    )
    task = asyncio.create_task(worker.async_run())
    return Run(worker, Redis.from_url(redis_url), queue), task


async def stop_worker(run: Run, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await close_worker(run.worker)
    await run.redis.aclose()


def records(count: int, prompt: str = "hello") -> list[str]:
    return [
        Record(
            id=f"call-{uuid.uuid4().hex[:10]}",
            mode="monitor",
            request_body={"messages": [{"role": "user", "content": prompt}]},
        ).to_json()
        for _ in range(count)
    ]


async def settle(fault: str, akto: FakeAkto, run: Run, produced: list[str], started: float) -> None:
    """Wait until every record is at Akto or dead-lettered; record the row; assert nothing is lost."""
    ids = [Record.from_json(raw).id for raw in produced]

    async def accounted() -> tuple[list[str], list[str]]:
        try:
            dead = set(await dlq.all_ids(run.redis, run.queue))
        except RedisError:  # while the test holds Redis away
            dead = set()
        delivered = [cid for cid in ids if cid in akto.message_ids()]
        return delivered, [cid for cid in ids if cid in dead and cid not in delivered]

    async with asyncio.timeout(SETTLE_SECONDS):
        while True:
            delivered, dead = await accounted()
            if len(delivered) + len(dead) == len(ids) or run.worker.jobs_failed:
                break
            await asyncio.sleep(0.2)
    counts = akto.message_ids()
    RESULTS.append(
        {
            "fault": fault,
            "produced": len(ids),
            "delivered": len(delivered),
            "dead_lettered": len(dead),
            "duplicates": sum(counts[cid] - 1 for cid in delivered),
            "lost": len(ids) - len(delivered) - len(dead),
            "p99_ms": "-",
            "requests_ok": f"settled in {time.monotonic() - started:.1f} s",
        }
    )
    assert run.worker.jobs_failed == 0, "a job failed: arq deleted it with its records"
    assert dead == []


async def test_batch_job_past_its_budget_hands_the_rest_to_the_retry_job(
    akto: FakeAkto,
    redis_server: tuple[RedisServer, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Ten chunks of two records, each answered after 0.4 s: 4 s in all, past arq's 3 s job timeout.
    batch = records(20)
    entry = len(with_publish_flag(encode(envelope(Record.from_json(batch[0]), AKTO))))
    monkeypatch.setattr(delivery, "INGEST_DATA_LIMITS", Limits("/api/ingestData", 5 * 1024 * 1024, 2 * entry + 40))
    akto.configure(delay_ms=400)
    server, _ = redis_server
    run, task = await start_worker(akto, server.url, delivery_mode="batch", batch_size=20)
    caplog.set_level(logging.WARNING, "akto_worker")
    started = time.monotonic()
    try:
        await enqueue_batch(run.redis, run.queue, batch, attempt=0, defer_ms=0, ttl_ms=600_000)
        await settle("batch job past its budget (1/10 scale)", akto, run, batch, started)
    finally:
        await stop_worker(run, task)
    assert "the job's delivery deadline passed" in caplog.text
    answered = akto.stats()["requests"]
    assert isinstance(answered, dict) and answered.get("200", 0) >= 10  # ten chunks of two


async def test_redis_away_while_failures_are_persisted_reruns_the_job(
    akto: FakeAkto,
    redis_server: tuple[RedisServer, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Akto refuses the batch with 503, and Redis goes away just as the job stores the retry job, for
    longer than arq's job timeout. The job ends with arq's Retry (not a timeout), arq's own
    bookkeeping waits for Redis, and the re-run delivers everything."""
    server, log_dir = redis_server
    outage_seconds = 6.0  # twice arq's job timeout
    outages: list[asyncio.Task[None]] = []
    real_add = add_batch

    async def restart_later() -> None:
        await asyncio.sleep(outage_seconds)
        await asyncio.to_thread(server.start, log_dir)

    def add_while_redis_is_away(*args: Any, **kwargs: Any) -> str:
        # Called as the job builds its store transaction, just before it is sent.
        if not outages:
            akto.configure(status=None)  # the re-run will find Akto healthy
            server.stop()
            outages.append(asyncio.get_running_loop().create_task(restart_later()))
        return real_add(*args, **kwargs)

    monkeypatch.setattr(jobs, "add_batch", add_while_redis_is_away)
    akto.configure(status=503)
    batch = records(5)
    run, task = await start_worker(akto, server.url)
    caplog.set_level(logging.ERROR, "akto_worker")
    started = time.monotonic()
    try:
        await enqueue_batch(run.redis, run.queue, batch, attempt=0, defer_ms=0, ttl_ms=600_000)
        await settle("Redis away while failures are persisted (1/10 scale)", akto, run, batch, started)
    finally:
        await stop_worker(run, task)
        await asyncio.gather(*outages)
    assert outages, "the job never persisted a retry: the fault was not injected"
    assert "the whole batch will run again" in caplog.text
