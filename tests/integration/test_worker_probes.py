"""A real worker's probes while its Redis is away: alive (no restart), not ready; ready again after."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.stack import FAST_RETRY, free_port, new_redis, start_fake_akto, start_worker, wait_until, worker_env


def _status(url: str) -> int:
    return httpx.get(url, timeout=10).status_code


def test_redis_outage_leaves_the_worker_alive_but_not_ready(tmp_path: Path) -> None:
    redis = new_redis(tmp_path)
    akto_proc, akto = start_fake_akto(tmp_path)
    port = free_port()
    env = worker_env(
        akto.url, redis.url, f"akto:probes:{uuid.uuid4().hex[:8]}", **FAST_RETRY, AKTO_WORKER_METRICS_PORT=str(port)
    )
    worker = start_worker("worker-probes", env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _status(f"{base}/healthz") == 200
        assert _status(f"{base}/readyz") == 200

        redis.stop()
        wait_until(lambda: _status(f"{base}/readyz") == 503, 30, what="readiness to notice Redis is gone")
        assert _status(f"{base}/healthz") == 200, "a Redis outage must not get the worker restarted"
        assert worker.alive()

        redis.start(tmp_path)
        wait_until(lambda: _status(f"{base}/readyz") == 200, 60, what="readiness once Redis is back")
        assert _status(f"{base}/healthz") == 200
    finally:
        worker.stop()
        akto_proc.stop()
        redis.stop()
