"""A Redis that stops answering without closing its sockets (SIGSTOP here; a network partition looks
the same to a client): every client we build gives up on a command after ``redis_timeout``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from akto_hook.guardrail import AktoGuardrail
from akto_ingest.connections import SENTINEL_TIMEOUT_SECONDS, bounded, redis_client
from tests.stack import BIN, RedisServer, new_redis

GOOD = {"akto_base_url": "http://akto.internal:9090", "akto_api_key": "akto-secret"}


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, SIGSTOPped by its pid; SIGCONT and stopped at teardown."""
    server = new_redis(tmp_path)
    assert server.proc is not None
    pid = server.proc.popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()


def test_akto_ingest_gives_up_on_a_frozen_redis(frozen: RedisServer) -> None:
    start = time.monotonic()
    result = subprocess.run(
        [str(BIN / "akto-ingest"), "--redis-url", frozen.url, "--queue", "q", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "AKTO_REDIS_TIMEOUT": "0.5"},
    )
    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis" in result.stderr and "Timeout" in result.stderr
    assert time.monotonic() - start < 15


async def test_the_hooks_client_gives_up_on_a_frozen_redis(
    frozen: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AKTO_SPOOL_DIR", str(tmp_path / "spool"))
    guard = AktoGuardrail(guardrail_name="akto", redis_url=frozen.url, redis_timeout=0.5, **GOOD)
    client = guard._enqueuer._redis
    start = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await client.get("x")
    assert time.monotonic() - start < 3
    await guard._enqueuer.close()


def test_sentinels_get_a_short_timeout_and_the_primary_the_redis_timeout() -> None:
    client: Any = redis_client("redis+sentinel://s1:26379,s2:26380/primary", **bounded(5.0))
    pool = client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 5.0
    assert pool.connection_kwargs["socket_keepalive"] is True
    for sentinel in pool.sentinel_manager.sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == SENTINEL_TIMEOUT_SECONDS
        assert "password" not in kwargs or kwargs["password"] is None
