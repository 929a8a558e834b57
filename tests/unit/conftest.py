"""Shared fixtures of the unit tests: a fake Akto, Redis (fake and real), and record builders."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

# LiteLLM fetches its model cost map from the network at import; the unit tests must not.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fakeredis  # noqa: E402
import pytest  # noqa: E402
import pytest_asyncio  # noqa: E402
from arq.constants import job_key_prefix  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from akto_hook.recording.enqueue import Enqueuer  # noqa: E402
from akto_ingest.akto_client import AktoClient  # noqa: E402
from akto_ingest.config import AktoSettings, WorkerConfig  # noqa: E402
from akto_ingest.queue import dlq_index_key, dlq_key, inbox_key, violations_key  # noqa: E402
from akto_ingest.record import Record  # noqa: E402
from akto_worker.delivery import Deliverer  # noqa: E402
from tests.fake_akto import FakeAkto  # noqa: E402

REAL_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
API_KEY = "unit-test-akto-key"

RecordFactory = Callable[..., Record]
RecordJsonFactory = Callable[..., str]


class RedisOutage:
    """Makes an :class:`Enqueuer`'s Redis writes fail while ``down`` is true; all else stays real."""

    def __init__(self, enqueuer: Enqueuer) -> None:
        self.down = True
        self._healthy = enqueuer._push_many
        enqueuer._push_many = self._push  # type: ignore[method-assign]

    async def _push(self, lines: list[str]) -> None:
        if self.down:
            raise RedisConnectionError("Redis is down")
        await self._healthy(lines)


def _record(
    id: str | None = None,
    mode: str = "block",
    prompt: str = "hello",
    **fields: Any,
) -> Record:
    values: dict[str, Any] = {
        "id": id or f"call-{uuid4().hex[:12]}",
        "mode": mode,
        "request_headers": {"content-type": "application/json", "user-agent": "unit"},
        "request_body": {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]},
        "response_body": {"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
    }
    values.update(fields)
    return Record(**values)


@pytest.fixture
def make_record() -> RecordFactory:
    """``make_record(id=None, mode="block", prompt="hello", **fields)`` -> a valid Record."""
    return _record


@pytest.fixture
def record_json() -> RecordJsonFactory:
    """Like ``make_record`` but returns the queued JSON text."""

    def build(*args: Any, **kwargs: Any) -> str:
        return _record(*args, **kwargs).to_json()

    return build


@pytest_asyncio.fixture
async def fake_akto() -> AsyncIterator[FakeAkto]:
    akto = FakeAkto(api_key=API_KEY)
    await akto.start()
    try:
        yield akto
    finally:
        await akto.stop()


def akto_settings(url: str, **extra: Any) -> AktoSettings:
    return AktoSettings.load({"akto_base_url": url, "akto_api_key": API_KEY, **extra}, env={})


@pytest_asyncio.fixture
async def make_deliverer() -> AsyncIterator[Callable[..., Deliverer]]:
    """``make_deliverer(url, client_cls=AktoClient, timeout=2.0, **worker_config)`` -> Deliverer.

    Every client it creates is closed after the test, inside the test's event loop.
    """
    clients: list[AktoClient] = []

    def build(url: str, *, client_cls: type[AktoClient] = AktoClient, timeout: float = 2.0, **config: Any) -> Deliverer:
        akto = akto_settings(url)
        client = client_cls(akto, timeout=timeout)
        clients.append(client)
        return Deliverer(client, akto, WorkerConfig.load(config, env={}))

    yield build
    for client in clients:
        await client.close()


@pytest.fixture
def fake_redis() -> Any:
    return fakeredis.FakeAsyncRedis()


@pytest.fixture
def queue_name() -> str:
    return f"akto:test:{uuid4().hex}"


@pytest_asyncio.fixture
async def real_redis(queue_name: str) -> AsyncIterator[Redis]:
    """The real Redis at 127.0.0.1:6379/0 (for Lua and real transactions); skips when none answers.

    Deletes every key under the test's unique ``queue_name`` and the arq jobs queued on it.
    """
    redis = Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        pytest.skip(f"no Redis answers at {REAL_REDIS_URL}: {exc}")
    try:
        yield redis
    finally:
        job_ids = await redis.zrange(queue_name, 0, -1)
        keys = [job_key_prefix + (j.decode() if isinstance(j, bytes) else str(j)) for j in job_ids]
        await redis.delete(
            queue_name,
            inbox_key(queue_name),
            dlq_key(queue_name),
            dlq_index_key(queue_name),
            violations_key(queue_name),
            *keys,
        )
        await redis.aclose()


@pytest_asyncio.fixture
async def live_guardrail(
    fake_akto: FakeAkto, real_redis: Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await live_guardrail(**params)``: an ``AktoGuardrail`` (block mode, pre_call and post_call
    unless ``params`` say otherwise) against the fake Akto and a real Redis, closed after the test."""
    # Imported here: LiteLLM's import is slow, and most unit tests never need it.
    from akto_hook.guardrail import AktoGuardrail

    monkeypatch.setenv("AKTO_SPOOL_DIR", str(tmp_path / "spool"))
    guards: list[AktoGuardrail] = []

    async def make(**params: Any) -> AktoGuardrail:
        values: dict[str, Any] = {
            "guardrail_name": "akto-guard",
            "event_hook": ["pre_call", "post_call"],
            "default_on": False,
            "akto_base_url": fake_akto.url,
            "akto_api_key": API_KEY,
            "redis_url": REAL_REDIS_URL,
            "queue_name": queue_name,
        }
        guard = AktoGuardrail(**{**values, **params})
        guards.append(guard)
        return guard

    yield make
    for guard in guards:
        await guard._enqueuer.close()
        await guard._akto.close()
