"""The hook's own RPUSH (``rpush.Pusher``): the same bytes redis-py would send, one kept connection,
and a connection Redis dropped while idle is replaced without losing or doubling a record."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from akto_hook.rpush import Pusher, packed_rpush
from akto_ingest.connections import redis_client
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record

from .conftest import REAL_REDIS_URL


def test_packed_rpush_is_what_redis_py_packs() -> None:
    client = Redis()
    lines = ['{"id":"a"}', "é \u2028 \r\n", ""]
    expected = b"".join(
        client.connection_pool.make_connection().pack_command(  # type: ignore[no-untyped-call]
            "RPUSH", "q:inbox", *lines
        )
    )
    assert packed_rpush(b"q:inbox", lines) == expected


async def test_pushes_share_one_connection_and_survive_redis_dropping_it(real_redis: Redis, queue_name: str) -> None:
    name = f"pusher-{queue_name.rsplit(':', 1)[-1]}"
    client = redis_client(REAL_REDIS_URL, socket_connect_timeout=1, socket_timeout=None, client_name=name)
    pusher = Pusher(client, queue_name)
    try:
        await pusher(["one"])
        await pusher(["two", "three"])
        assert len(client.connection_pool._in_use_connections) == 1
        # Redis closes the idle connection (a restart, its idle timeout, a failover).
        (kept,) = [c["id"] for c in await real_redis.client_list() if c.get("name") == name]
        await real_redis.client_kill_filter(_id=kept)
        await pusher(["four"])
        items = await real_redis.lrange(inbox_key(queue_name), 0, -1)  # type: ignore[misc]
        assert items == [b"one", b"two", b"three", b"four"]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "é \u2028 <>&'\"\\ \x00"}], "n": 2**63 - 1, "x": [0.1, -0.0, None]},
        {"t": float("nan"), "u": float("inf"), "v": 1e21, "w": (1, 2)},
        {"when": datetime.datetime(2026, 1, 2, 3, 4, 5)},  # not plain JSON: pydantic writes it
        {"big": 2**70, "nested": {1: "non-str key"}},  # not plain JSON: pydantic writes it
    ],
)
def test_record_json_is_exactly_pydantics(body: dict[Any, Any]) -> None:
    record = Record(id="c", mode="monitor", request_body=body, response_body={"tool_calls": None})
    assert record.to_json() == record.model_dump_json(exclude_none=True)
