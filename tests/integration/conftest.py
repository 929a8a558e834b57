"""The real stack for integration tests: one fake Akto process, three LiteLLM proxies configured from
the shipped examples (which are the spec's configs), and one arq worker per proxy queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack import (
    BLOCK_EXAMPLE,
    FAST_RETRY,
    MONITOR_EXAMPLE,
    PROMETHEUS_SETTINGS,
    AktoAdmin,
    Proc,
    Proxy,
    RedisServer,
    free_port,
    litellm_config,
    new_redis,
    start_fake_akto,
    start_proxy,
    start_worker,
    wait_proxy,
    worker_env,
)


@dataclass
class Stack:
    log_dir: Path
    akto: AktoAdmin
    block_open: Proxy
    block_closed: Proxy
    monitor: Proxy
    private_redis: RedisServer
    workers: dict[str, Proc]
    worker_metrics_port: int


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack(log_dir: Path, redis_url: str) -> Iterator[Stack]:
    run = uuid.uuid4().hex[:8]
    akto_proc, akto = start_fake_akto(log_dir)
    # block_closed has a Redis of its own so a test can take it down without touching the others.
    private_redis = new_redis(log_dir)
    proxies = {
        # The spec's block config as written: fail_open, 10 s timeout.
        "block_open": start_proxy(
            "proxy-block-open",
            litellm_config(BLOCK_EXAMPLE, litellm_settings=PROMETHEUS_SETTINGS),
            log_dir,
            akto_url=akto.url,
            redis_url=redis_url,
            queue=f"akto:it:{run}:open",
        ),
        # The same without the optional keys: fail_closed and 5 s are the defaults under test.
        "block_closed": start_proxy(
            "proxy-block-closed",
            litellm_config(BLOCK_EXAMPLE, drop=("unreachable_fallback", "guardrail_timeout")),
            log_dir,
            akto_url=akto.url,
            redis_url=private_redis.url,
            queue=f"akto:it:{run}:closed",
        ),
        "monitor": start_proxy(
            "proxy-monitor",
            litellm_config(MONITOR_EXAMPLE),
            log_dir,
            akto_url=akto.url,
            redis_url=redis_url,
            queue=f"akto:it:{run}:monitor",
        ),
    }
    procs: list[Proc] = [akto_proc, *(p.proc for p in proxies.values())]
    try:
        for proxy in proxies.values():
            wait_proxy(proxy)
        metrics_port = free_port()
        workers: dict[str, Proc] = {}
        for name, proxy in proxies.items():
            port = metrics_port if name == "monitor" else 0
            env = worker_env(akto.url, proxy.redis_url, proxy.queue, **FAST_RETRY, AKTO_WORKER_METRICS_PORT=str(port))
            workers[name] = start_worker(f"worker-{name}", env, log_dir)
            procs.append(workers[name])  # at once, so a later failure still stops it
        yield Stack(
            log_dir, akto, workers=workers, private_redis=private_redis, worker_metrics_port=metrics_port, **proxies
        )
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)
        private_redis.stop()


@pytest.fixture(autouse=True)
def clean_akto(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").akto.reset()
