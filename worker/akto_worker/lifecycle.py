"""What a worker process does around arq's jobs: its configuration, start-up and shutdown.

Importing this module reads no configuration; ``settings.py`` loads it once and hands it to
:func:`startup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from redis.asyncio import Redis
from redis.exceptions import RedisError

from akto_ingest import logs
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, QueueSettings, WorkerConfig
from akto_ingest.errors import ConfigError
from akto_ingest.queue import Claimer

from . import health
from .collector import collect, report_backlog
from .delivery import Deliverer
from .state import WorkerState

log = logging.getLogger("akto_worker")


@dataclass(frozen=True)
class Config:
    """Everything the worker is configured with, validated together."""

    akto: AktoSettings
    queue: QueueSettings
    worker: WorkerConfig

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Self:
        """Read the environment; raises :class:`~akto_ingest.errors.ConfigError` naming each bad variable."""
        config = cls(AktoSettings.load(env=env), QueueSettings.load(env=env), WorkerConfig.load(env=env))
        if config.worker.round_budget <= config.queue.redis_timeout:
            raise ConfigError(
                f"AKTO_WORKER_ROUND_BUDGET={config.worker.round_budget:g} must be longer than "
                f"AKTO_REDIS_TIMEOUT={config.queue.redis_timeout:g}: a single slow Redis command would "
                "fail the worker's liveness"
            )
        return config


def max_jobs(config: WorkerConfig) -> int:
    """How many batch jobs arq runs at once in this process.

    Enough that every delivery slot stays busy while some jobs are between waves or waiting on
    arq's poll: per record, each job fills batch_size slots at most. In batch mode a job is one
    ingestData call; 16 jobs at the default concurrency kept one process over 10,000 records/s at
    89 MB peak RSS, where 32 jobs peaked at 108 MB for no more speed.
    """
    if config.delivery_mode == "batch":
        return max(4, config.concurrency // 8)
    return 2 * -(-config.concurrency // config.batch_size) + 2


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


async def startup(ctx: dict[str, Any], config: Config) -> None:
    """arq's ``on_startup``: the Akto client, the collector and the probes, all kept in ``ctx``."""
    logs.setup("akto_worker")
    # arq logs each job's failure with its exception, which may name a URL.
    logs.mask_credentials("arq.worker", "arq.connections")
    ctx["config"] = config
    redis: Redis = ctx["redis"]
    for warning in await check_redis_durability(redis):
        log.warning(warning)
    client = AktoClient(config.akto, timeout=config.worker.delivery_timeout, max_connections=config.worker.concurrency)
    ctx["akto_client"] = client
    state = WorkerState(Deliverer(client, config.akto, config.worker), config.worker, config.queue.queue_name)
    ctx["akto"] = state
    claimer = Claimer(redis, state.queue_name, config.worker.batch_size, state.job_ttl_ms)
    budget = config.worker.round_budget
    claims = health.Rounds("the collector", budget)
    polls = ctx[health.POLL_ROUNDS] = health.Rounds("arq's poll", budget)
    collector = asyncio.create_task(collect(claimer, config.worker.batch_size, claims), name="akto-collector")
    liveness = health.Liveness(collector, (polls, claims))
    ctx["background"] = [
        collector,
        asyncio.create_task(report_backlog(redis, state.queue_name), name="akto-backlog"),
        asyncio.create_task(liveness.watch_loop(), name="akto-loop-watch"),
    ]
    if config.worker.metrics_port:
        ctx["health"] = await health.serve(redis, config.worker.metrics_port, liveness)
    log.info(
        "akto worker ready: queue=%s akto=%s mode=%s concurrency=%d batch=%d",
        state.queue_name,
        logs.mask_urls(config.akto.akto_base_url),
        config.worker.delivery_mode,
        config.worker.concurrency,
        config.worker.batch_size,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq's ``on_shutdown``: runs after arq has let in-flight jobs finish."""
    background: list[asyncio.Task[None]] = ctx.pop("background", [])
    for task in background:
        task.cancel()
    for task in background:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if "health" in ctx:
        await ctx.pop("health").cleanup()
    if "akto_client" in ctx:
        await ctx.pop("akto_client").close()
