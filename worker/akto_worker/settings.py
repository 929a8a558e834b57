"""Builds arq's ``WorkerSettings`` from the environment: the single place the worker is configured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from arq import func
from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from akto_ingest import logs
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, QueueSettings, WorkerConfig
from akto_ingest.queue import Claimer, decode_job, encode_job

from . import health
from .claims import survive_connection_drops
from .collector import collect, report_backlog
from .deadline import job_limits
from .delivery import Deliverer
from .jobs import dead_letter_job, deliver
from .state import WorkerState

log = logging.getLogger("akto_worker")


def redis_settings(url: str) -> RedisSettings:
    """arq's Redis settings, riding out a Redis restart instead of letting the worker die."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    settings.retry_on_timeout = True
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    # OSError too: a refused connection surfaces as the builtin ConnectionRefusedError, which
    # redis-py's default retry does not cover. 60 tries capped at 5 s ride out about 5 minutes.
    settings.retry = RedisRetry(
        ExponentialBackoff(cap=5, base=0.1),
        retries=60,
        supported_errors=(RedisConnectionError, RedisTimeoutError, OSError),  # type: ignore[arg-type]
    )
    return settings


async def check_redis_durability(redis: Redis) -> list[str]:
    """Warnings for Redis settings that can lose queued records."""
    warnings = []
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy", "")
        aof = (await redis.config_get("appendonly")).get("appendonly", "")
        save = (await redis.config_get("save")).get("save", "")
    except RedisError as exc:
        return [f"cannot read Redis's configuration ({exc}); check maxmemory-policy and persistence by hand"]
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict queued records. "
            "Set maxmemory-policy noeviction."
        )
    if aof != "yes" and not save:
        warnings.append(
            "Redis persistence is off (appendonly no, no save points): a Redis restart loses every "
            "queued record. Turn on appendonly yes."
        )
    return warnings


def build_worker_settings(env: Mapping[str, str] | None = None) -> type:
    """Read and validate the configuration, then return the class arq's CLI runs."""
    akto = AktoSettings.load(env=env)
    queue = QueueSettings.load(env=env)
    config = WorkerConfig.load(env=env)
    # arq treats its job timeout as terminal: it is derived from the delivery timeout so that every job
    # ends on its own deadlines first (deadline.py).
    limits = job_limits(config.delivery_timeout)
    survive_connection_drops()
    background: list[asyncio.Task[None]] = []

    async def startup(ctx: dict[str, Any]) -> None:
        logs.setup("akto_worker")
        redis: Redis = ctx["redis"]
        for warning in await check_redis_durability(redis):
            log.warning(warning)
        client = AktoClient(akto, timeout=config.delivery_timeout, max_connections=config.concurrency)
        ctx["akto_client"] = client
        ctx["akto"] = WorkerState(Deliverer(client, akto, config), config, queue.queue_name)
        state: WorkerState = ctx["akto"]
        claimer = Claimer(redis, queue.queue_name, config.batch_size, state.job_ttl_ms)
        background.append(asyncio.create_task(collect(claimer, config.batch_size)))
        background.append(asyncio.create_task(report_backlog(redis, queue.queue_name)))
        if config.metrics_port:
            ctx["health"] = await health.serve(redis, config.metrics_port)
        log.info(
            "akto worker ready: queue=%s akto=%s mode=%s concurrency=%d batch=%d",
            queue.queue_name,
            akto.akto_base_url,
            config.delivery_mode,
            config.concurrency,
            config.batch_size,
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        background.clear()
        if "health" in ctx:
            await ctx["health"].cleanup()
        if "akto_client" in ctx:
            await ctx["akto_client"].close()

    # Enough batch jobs at once that every delivery slot stays busy while some jobs are between
    # waves or waiting on arq's poll: per record, each job fills batch_size slots at most. In batch
    # mode a job is one ingestData call; 16 jobs at the default concurrency kept one process over
    # 10,000 records/s at 89 MB peak RSS, where 32 jobs peaked at 108 MB for no more speed.
    if config.delivery_mode == "batch":
        max_jobs = max(4, config.concurrency // 8)
    else:
        max_jobs = 2 * -(-config.concurrency // config.batch_size) + 2
    return type(
        "WorkerSettings",
        (),
        {
            "functions": [
                func(deliver, name="deliver", timeout=limits.job_timeout),
                func(dead_letter_job, name="dead_letter_job", timeout=limits.job_timeout),
            ],
            "redis_settings": redis_settings(queue.redis_url),
            "queue_name": queue.queue_name,
            "max_jobs": max_jobs,
            "job_timeout": limits.job_timeout,
            # Retries are ours (new deferred jobs); arq's own counter only guards crash loops.
            "max_tries": 1_000_000,
            "keep_result": 0,
            "poll_delay": 0.05,
            "job_serializer": encode_job,
            "job_deserializer": decode_job,
            "job_completion_wait": limits.stop_wait,
            "retry_jobs": True,
            "health_check_interval": 10,
            "on_startup": startup,
            "on_shutdown": shutdown,
        },
    )
