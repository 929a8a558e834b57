"""The hook's kept RPUSH connection under faults: a push cut short by ``enqueue_timeout``, a write
backed up when the timeout fires, error replies, a demoted primary. A reply is only ever taken for
the push it answers: no record is believed written that was refused, and none is lost."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from akto_hook.recording import recovery
from akto_hook.recording.enqueue import Enqueuer, close_all
from akto_hook.recording.rpush import Pusher
from akto_ingest.connections import redis_client
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record

from .conftest import REAL_REDIS_URL
from .fake_resp import Answer, FakeResp, Reply

TIMEOUT = 0.05  # enqueue_timeout's default; the writer bounds every push with it

Serve = Callable[..., Awaitable[FakeResp]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(answer, **FakeResp fields)`` -> a started fake Redis; stopped after the test."""
    servers: list[FakeResp] = []

    async def start(answer: Answer, **fields: dict[int, float]) -> FakeResp:
        server = FakeResp(answer, **fields)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def pusher_for(server: FakeResp) -> Pusher:
    # The Enqueuer's own client settings.
    return Pusher(redis_client(server.url, socket_connect_timeout=1, socket_timeout=None), "q")


def ok(count: int) -> Reply:
    return 0.0, b":%d\r\n" % count


def refused(values: list[bytes]) -> Reply | None:
    """A push of ``refused`` is answered with an error: it tells a stale reply from its own."""
    return (0.0, b"-ERR refused by the test\r\n") if values == [b"refused"] else None


async def bounded(pusher: Pusher, lines: list[str]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await pusher(lines)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the fake Redis never got there")


async def test_a_reply_that_comes_after_the_timeout_is_not_taken_for_the_next_push(serve: Serve) -> None:
    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        if values == [b"late"]:
            return 0.3, b":2\r\n"  # the server took it, but answers after the hook gave up
        return refused(values) or ok(index + 1)

    server = await serve(answer)
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        with pytest.raises(TimeoutError):
            await bounded(pusher, ["late"])
        await until(lambda: server.answered == 2)  # the late ":2" is on its way back
        with pytest.raises(ResponseError, match="refused by the test"):
            await pusher(["refused"])
        await pusher(["after"])
        assert [p.values for p in server.accepted][-1] == [b"after"]
    finally:
        await pusher._redis.aclose()


async def test_a_write_cut_short_by_the_timeout_leaves_no_half_command_for_the_next_push(serve: Serve) -> None:
    # After the first push the server stops reading that socket, so a large write backs up.
    server = await serve(lambda connection, index, values: refused(values) or ok(index + 1), stall_after={0: 1.0})
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        with pytest.raises(TimeoutError):
            await bounded(pusher, ["x" * (32 * 1024 * 1024)])
        with pytest.raises(ResponseError, match="refused by the test"):
            await pusher(["refused"])
        await pusher(["after"])
        assert server.accepted[-1].values == [b"after"]
        assert server.accepted[-1].connection != server.accepted[0].connection
    finally:
        await pusher._redis.aclose()


async def test_a_push_cancelled_while_its_reply_is_unread_leaves_none_for_the_next(serve: Serve) -> None:
    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        return (5.0, b":9\r\n") if values == [b"slow"] else refused(values) or ok(index + 1)

    server = await serve(answer)
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        task = asyncio.ensure_future(pusher(["slow"]))
        await until(lambda: len(server.pushes) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ResponseError, match="refused by the test"):
            await pusher(["refused"])
        await pusher(["after"])
        assert server.accepted[-1].values == [b"after"]
    finally:
        await pusher._redis.aclose()


@pytest.mark.parametrize(
    "error",
    [
        b"-WRONGTYPE Operation against a key holding the wrong kind of value",
        b"-OOM command not allowed when used memory > 'maxmemory'.",
        b"-READONLY You can't write against a read only replica.",
        b"-NOAUTH Authentication required.",
        b"-LOADING Redis is loading the dataset in memory",
        b"-MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    ],
)
async def test_an_error_reply_fails_the_push_and_the_next_push_gets_its_own_reply(serve: Serve, error: bytes) -> None:
    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        if values == [b"bad"]:
            return 0.0, error + b"\r\n"
        return refused(values) or ok(index + 1)

    server = await serve(answer)
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        with pytest.raises(RedisError):
            await pusher(["bad"])
        with pytest.raises(ResponseError, match="refused by the test"):
            await pusher(["refused"])
        await pusher(["after"])
        assert [p.values for p in server.accepted] == [[b"warm"], [b"after"]]
    finally:
        await pusher._redis.aclose()


async def test_a_connection_to_a_demoted_primary_is_replaced(serve: Serve) -> None:
    # A failover behind one address (DNS or a load balancer): the connection made before it reaches
    # the old primary, now a replica, which refuses writes; a new connection reaches the new primary.
    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        if connection == 0 and index > 0:
            return 0.0, b"-READONLY You can't write against a read only replica.\r\n"
        return ok(index + 1)

    server = await serve(answer)
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        with pytest.raises(ReadOnlyError):
            await pusher(["refused by the old primary"])
        await pusher(["after"])
        assert server.accepted[-1].values == [b"after"]
        assert server.accepted[-1].connection != 0
    finally:
        await pusher._redis.aclose()


def spooled_lines(folder: Path) -> list[str]:
    return [line for path in folder.glob("*.jsonl") for line in path.read_text().splitlines() if line]


def record(i: int) -> Record:
    return Record(id=f"call-{i}", mode="monitor")


async def test_records_refused_by_a_demoted_primary_are_spooled_then_reach_the_new_one(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)

    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        if connection == 0 and index > 0:
            return 0.0, b"-READONLY You can't write against a read only replica.\r\n"
        return ok(index + 1)

    server = await serve(answer)
    enqueuer = Enqueuer(server.url, "q", 0.5, tmp_path, 10 * 1024 * 1024)
    try:
        assert await enqueuer.put(record(0)) is True
        assert await enqueuer.put(record(1)) is False  # refused: spooled, not lost
        for i in range(2, 5):
            await enqueuer.put(record(i))
        await until(lambda: not enqueuer.breaker_open and len(server.accepted) >= 2)
        landed = [Record.from_json(v).id for p in server.accepted for v in p.values]
        assert landed == [f"call-{i}" for i in range(5)]
    finally:
        await enqueuer.close()


async def test_an_error_reply_spools_the_record_and_replays_it_once_redis_takes_it(
    real_redis: Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    await real_redis.set(inbox_key(queue_name), "not a list")  # WRONGTYPE for every RPUSH
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.5, tmp_path, 10 * 1024 * 1024)
    try:
        assert await enqueuer.put(record(0)) is False
        assert enqueuer.breaker_open
        await until(lambda: bool(list(tmp_path.glob("*.jsonl"))))  # on disk, for an operator to see
        await real_redis.delete(inbox_key(queue_name))
        await until(lambda: not enqueuer.breaker_open)
        assert await enqueuer.put(record(1)) is True
        raws = await real_redis.lrange(inbox_key(queue_name), 0, -1)  # type: ignore[misc]
        assert [Record.from_json(raw).id for raw in raws] == ["call-0", "call-1"]
    finally:
        await enqueuer.close()


async def test_a_push_redis_took_after_the_timeout_is_spooled_and_delivered_again_never_lost(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The documented duplicate window: Redis takes a group, the hook gives up before the reply.
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)

    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        return (0.3, b":1\r\n") if index == 1 else ok(index + 1)

    server = await serve(answer)
    enqueuer = Enqueuer(server.url, "q", TIMEOUT, tmp_path, 10 * 1024 * 1024)
    try:
        assert await enqueuer.put(record(0)) is True
        assert await enqueuer.put(record(1)) is False  # timed out: spooled
        await until(lambda: len(server.accepted) == 3 and not enqueuer.breaker_open)  # replayed
        assert await enqueuer.put(record(2)) is True
        landed = [Record.from_json(v).id for p in server.accepted for v in p.values]
        assert sorted(landed) == ["call-0", "call-1", "call-1", "call-2"]
    finally:
        await enqueuer.close()


async def test_proxy_shutdown_closes_an_enqueuer_on_its_own_threads_loop(
    real_redis: Redis, queue_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The callback's Enqueuer lives on its writer thread's loop; the proxy's shutdown (close_all)
    # runs on the proxy's loop while that thread may still be writing. Its connection must only
    # ever be used from its own loop, and every record must end in Redis or the spool.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    threads: set[int] = set()

    async def build() -> Enqueuer:
        enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.5, tmp_path, 10 * 1024 * 1024)
        original = enqueuer._push_many

        async def recording(lines: list[str]) -> None:
            threads.add(threading.get_ident())
            await original(lines)

        enqueuer._push_many = recording  # type: ignore[method-assign]
        return enqueuer

    async def feed(enqueuer: Enqueuer) -> None:
        puts = []
        for i in range(300):
            puts.append(asyncio.ensure_future(enqueuer.put(record(i))))
            await asyncio.sleep(0)
        await asyncio.gather(*puts)

    try:
        enqueuer = asyncio.run_coroutine_threadsafe(build(), loop).result(5)
        feeding = asyncio.run_coroutine_threadsafe(feed(enqueuer), loop)
        await until(lambda: bool(threads))
        await close_all()
        await asyncio.wrap_future(feeding)
        assert threads == {thread.ident}
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        raws = await real_redis.lrange(inbox_key(queue_name), 0, -1)  # type: ignore[misc]
        spooled = spooled_lines(tmp_path)
        ids = {Record.from_json(raw).id for raw in [*raws, *spooled]}
        assert ids == {f"call-{i}" for i in range(300)}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_a_push_while_another_is_in_flight_never_shares_its_connection(serve: Serve) -> None:
    # The writer's push and a spool replay can overlap: each must read its own reply.
    def answer(connection: int, index: int, values: list[bytes]) -> Reply:
        return (0.2, b":1\r\n") if values == [b"slow"] else refused(values) or ok(index + 1)

    server = await serve(answer)
    pusher = pusher_for(server)
    try:
        await pusher(["warm"])
        slow = asyncio.ensure_future(pusher(["slow"]))
        await until(lambda: len(server.pushes) == 2)
        with pytest.raises(ResponseError, match="refused by the test"):
            await pusher(["refused"])
        await pusher(["beside"])
        await slow
        by_value = {p.values[0]: p.connection for p in server.pushes}
        assert by_value[b"slow"] == by_value[b"warm"] != by_value[b"beside"]
        assert sorted(p.values[0] for p in server.accepted) == [b"beside", b"slow", b"warm"]
    finally:
        await pusher._redis.aclose()
