"""The hook's own RPUSH (``rpush.Pusher``): the same bytes redis-py would send, one kept connection,
and a connection Redis dropped while idle is replaced without losing or doubling a record."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from akto_hook.recording.rpush import Pusher, packed_rpush
from akto_ingest.connections import redis_client
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record

from .conftest import REAL_REDIS_URL


class _Text(str):
    pass


class _Int(int):
    pass


class _Plain(enum.Enum):
    A = "a"


class _Named(enum.StrEnum):
    B = "b"


class _Number(enum.IntEnum):
    C = 3


@dataclasses.dataclass
class _Point:
    x: int = 1


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
        {"nested": {1: "non-str key"}},  # not plain JSON: pydantic writes it
        {"edges": [2**63, 2**64 - 1, -(2**63), 0, -1]},
        {"floats": [1e16, 1e15, 1e22, 1e-7, 2.5e-5, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, -math.inf, 1.0]},
        {"keys": {True: 1, None: 2, 1.5: 3, "": 4}},
        {"none": {"a": None, "b": [None, {"c": None}]}},
        {"types": [_Text("sub"), _Int(5), _Plain.A, _Named.B, _Number.C, uuid.UUID(int=7), decimal.Decimal("1.5")]},
        {"more": [datetime.date(2026, 1, 2), _Point(), b"bytes", (1, (2, 3)), frozenset()]},
        {"text": "\x7f\x1f\u2028\u2029</script> \U0001f600 " + "a" * 70_000},
    ],
)
def test_record_json_is_exactly_pydantics(body: dict[Any, Any]) -> None:
    record = Record(id="c", mode="monitor", request_body=body, response_body={"tool_calls": None})
    assert record.to_json() == record.model_dump_json(exclude_none=True)


def test_integers_orjson_cannot_write_are_written_as_their_text_not_as_pydantic_writes_them() -> None:
    # pydantic writes 2**64 as a number, which orjson (the worker's parser) reads as a float.
    record = Record(id="c", mode="monitor", request_body={"big": 2**70, "edges": [2**64, -(2**63) - 1, 2**64 - 1]})
    assert json.loads(record.to_json())["request_body"] == {
        "big": str(2**70),
        "edges": [str(2**64), str(-(2**63) - 1), 2**64 - 1],
    }


def test_record_json_is_exactly_pydantics_for_every_field() -> None:
    record = Record(
        id="c",
        mode="block",
        created_ms=2**53 + 1,
        path="/v1/messages",
        method="PUT",
        request_headers={"X-Odd": "ü"},
        request_body={"a": 1},
        response_headers={},
        response_body={},
        status_code=400,
        client_ip="::1",
        session_id="42",
        metadata={"masked": "request", "": ""},
        blocked_reason="r",
        blocked_policy="p",
        blocked_rule="q",
        blocked_severity="high",
    )
    assert record.to_json() == record.model_dump_json(exclude_none=True)
    copied = record.model_copy(update={"blocked_policy": None, "metadata": {"llm_output": "discarded"}})
    assert copied.to_json() == copied.model_dump_json(exclude_none=True)
