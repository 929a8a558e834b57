"""``arq akto_worker.WorkerSettings``: a plain class, configured once from the environment."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import create_worker, get_kwargs
from redis.asyncio.sentinel import SentinelConnectionPool

import akto_worker
from akto_ingest.config import ENV_NAMES
from akto_ingest.errors import ConfigError
from akto_ingest.queue import decode_job, encode_job
from akto_worker import lifecycle

GOOD = {"AKTO_GUARDRAIL_API_BASE": "http://akto:9090", "AKTO_API_KEY": "k", "AKTO_QUEUE_NAME": "q-settings"}

Load = Callable[..., ModuleType]


@pytest.fixture
def load_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Load]:
    """Import ``akto_worker.settings`` afresh under the given environment, as ``arq`` would."""

    def load(**env: str) -> ModuleType:
        for name in ENV_NAMES.values():
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("akto_worker.settings", None)
        return importlib.import_module("akto_worker.settings")

    yield load
    sys.modules.pop("akto_worker.settings", None)


def test_worker_settings_is_a_plain_class_built_once(load_settings: Load) -> None:
    module = load_settings(**GOOD)
    first = akto_worker.WorkerSettings
    assert inspect.isclass(first) and first.__module__ == "akto_worker.settings"
    assert first is module.WorkerSettings
    assert akto_worker.WorkerSettings is first, "looking it up again must not rebuild it"


def test_arq_reads_every_limit_from_one_job_timeout(load_settings: Load) -> None:
    settings = load_settings(**GOOD, AKTO_WORKER_CONCURRENCY="64", AKTO_BATCH_SIZE="10")
    kwargs: dict[str, Any] = dict(get_kwargs(settings.WorkerSettings))  # arq types the values as NameError
    timeout = settings.JOB_TIMEOUT_SECONDS
    assert kwargs["job_timeout"] == kwargs["job_completion_wait"] == timeout
    assert {f.name: f.timeout_s for f in kwargs["functions"]} == {"deliver": timeout, "dead_letter_job": timeout}
    assert kwargs["queue_name"] == "q-settings"
    assert kwargs["max_jobs"] == lifecycle.max_jobs(settings.config.worker) == 2 * 7 + 2
    pool = kwargs["redis_pool"]
    assert isinstance(pool, ArqRedis) and pool.default_queue_name == "q-settings"
    assert (pool.job_serializer, pool.job_deserializer) == (encode_job, decode_job)  # JSON, never pickle
    worker = create_worker(settings.WorkerSettings)  # exactly what `arq akto_worker.WorkerSettings` does
    assert worker.queue_name == "q-settings" and worker.pool is pool


def test_sentinel_url_reaches_the_worker_pool_and_arq_check(load_settings: Load) -> None:
    settings = load_settings(**GOOD, REDIS_URL="redis+sentinel://:pw@s1:26380,s2/primary/2")
    pool = settings.WorkerSettings.redis_pool
    assert isinstance(pool.connection_pool, SentinelConnectionPool)
    assert pool.connection_pool.service_name == "primary"
    assert pool.connection_pool.connection_kwargs["db"] == 2
    assert pool.connection_pool.connection_kwargs["password"] == "pw"
    assert pool.connection_pool.connection_kwargs["retry"]._retries == 60  # rides out the failover
    check = settings.WorkerSettings.redis_settings
    assert (check.sentinel, check.host, check.sentinel_master, check.database) == (
        True,
        [("s1", 26380), ("s2", 26379)],
        "primary",
        2,
    )


def test_bad_config_fails_at_import_naming_the_variable(load_settings: Load) -> None:
    with pytest.raises(ConfigError, match=r"akto_api_key \(env AKTO_API_KEY\) is required"):
        load_settings(AKTO_GUARDRAIL_API_BASE="http://akto")
    with pytest.raises(ConfigError, match=r"redis_url \(env REDIS_URL\): names no Sentinel master"):
        load_settings(**GOOD, REDIS_URL="redis+sentinel://s1:26379")


async def test_startup_keeps_config_and_background_tasks_in_ctx_and_shutdown_ends_them(
    real_redis: Any, queue_name: str
) -> None:
    config = lifecycle.Config.load(env={**GOOD, "AKTO_QUEUE_NAME": queue_name, "AKTO_WORKER_METRICS_PORT": "0"})
    ctx: dict[str, Any] = {"redis": real_redis}
    await lifecycle.startup(ctx, config)
    background = list(ctx["background"])
    try:
        assert ctx["config"] is config
        assert ctx["akto"].queue_name == queue_name
        assert [t.get_name() for t in background] == ["akto-collector", "akto-backlog", "akto-loop-watch"]
        assert not any(t.done() for t in background)
    finally:
        await lifecycle.shutdown(ctx)
    assert all(t.done() for t in background)
    assert "background" not in ctx and "akto_client" not in ctx


def test_the_worker_pool_bounds_every_command_with_the_redis_timeout(load_settings: Load) -> None:
    settings = load_settings(**GOOD, REDIS_URL="redis+sentinel://s1:26380/primary", AKTO_REDIS_TIMEOUT="2.5")
    kwargs = settings.WorkerSettings.redis_pool.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2.5
    assert kwargs["socket_keepalive"] is True
    assert kwargs["retry_on_timeout"] is True  # a timed-out command reconnects, asking the Sentinels again


def test_a_round_budget_within_the_redis_timeout_is_refused(load_settings: Load) -> None:
    with pytest.raises(ConfigError, match=r"AKTO_WORKER_ROUND_BUDGET=5 must be longer than AKTO_REDIS_TIMEOUT=5"):
        load_settings(**GOOD, AKTO_WORKER_ROUND_BUDGET="5")
