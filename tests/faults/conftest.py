"""The fault-injection stack and the results table printed at the end of the run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker

from tests.stack import (
    FAST_RETRY,
    MONITOR_EXAMPLE,
    AktoAdmin,
    Proc,
    Proxy,
    RedisServer,
    litellm_config,
    new_redis,
    start_fake_akto,
    start_proxy,
    start_worker,
    wait_proxy,
    worker_env,
)

RESULTS: list[dict[str, Any]] = []


@dataclass
class FaultStack:
    log_dir: Path
    akto: AktoAdmin
    redis: RedisServer
    proxy: Proxy
    workers: list[Proc] = field(default_factory=list)
    worker_count: int = 0

    def add_worker(self) -> Proc:
        self.worker_count += 1
        env = worker_env(self.akto.url, self.redis.url, self.proxy.queue, **FAST_RETRY)
        proc = start_worker(f"fault-worker-{self.worker_count}", env, self.log_dir)
        self.workers.append(proc)
        return proc


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    log_dir = tmp_path_factory.mktemp("faults")
    akto_proc, akto = start_fake_akto(log_dir)
    # AOF on, as we tell users to run it: a Redis restart must not lose the queue.
    redis = new_redis(log_dir, appendonly=True)
    queue = f"akto:faults:{uuid.uuid4().hex[:8]}"
    proxy = start_proxy(
        "fault-proxy",
        litellm_config(MONITOR_EXAMPLE),
        log_dir,
        akto_url=akto.url,
        redis_url=redis.url,
        queue=queue,
        env={"AKTO_SPOOL_DIR": str(log_dir / "spool")},
    )
    stack = FaultStack(log_dir, akto, redis, proxy)
    try:
        wait_proxy(proxy)
        stack.add_worker()
        stack.add_worker()
        yield stack
    finally:
        for proc in [*stack.workers, proxy.proc, akto_proc]:
            proc.stop(timeout=60)
        redis.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    columns = ["fault", "produced", "delivered", "dead_lettered", "duplicates", "lost", "p99_ms", "requests_ok"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in RESULTS)) for c in columns}
    terminalreporter.write_sep("=", "fault injection: nothing lost")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in columns))
    for row in RESULTS:
        terminalreporter.write_line("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


async def close_worker(worker: Worker, *, wait: float = 30) -> None:
    """Close an in-process arq worker whose run task was cancelled. Jobs still running (a job that
    delivered its last record but has not finished, or a rerun) are left to end first: arq's
    ``close()`` cancels running jobs and re-raises their CancelledError out of its gather."""
    async with asyncio.timeout(wait):
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    await worker.close()
