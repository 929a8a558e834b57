"""The hook's Redis write: group commit, the breaker, the spool and its replay."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from akto_hook.recording import recovery
from akto_hook.recording.enqueue import Enqueuer
from akto_hook.recording.writer import Entry, GroupWriter
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record

from .conftest import REAL_REDIS_URL, RedisOutage


def rec(i: int) -> Record:
    return Record(id=f"call-{i}", mode="block", request_body={"messages": [{"role": "user", "content": str(i)}]})


async def inbox_ids(redis: Redis, queue: str) -> list[str]:
    raws = await redis.lrange(inbox_key(queue), 0, -1)  # type: ignore[misc]  # redis-py types sync|async
    return [Record.from_json(raw).id for raw in raws]


def segments(folder: Path) -> list[Path]:
    return list(folder.glob("*.jsonl"))


async def test_concurrent_puts_share_round_trips_and_keep_order(
    real_redis: Redis, queue_name: str, tmp_path: Path
) -> None:
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.5, tmp_path, 10 * 1024 * 1024)
    pushes: list[int] = []
    original = enqueuer._push_many

    async def counting(lines: list[str]) -> None:
        pushes.append(len(lines))
        await original(lines)

    enqueuer._push_many = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(enqueuer.put(rec(i)) for i in range(64)))
        assert all(results)
        assert await inbox_ids(real_redis, queue_name) == [f"call-{i}" for i in range(64)]
        assert sum(pushes) == 64 and len(pushes) < 64, pushes
    finally:
        await enqueuer.close()


async def test_redis_failure_spools_without_waiting_then_replays_in_order(
    real_redis: Redis, queue_name: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    outage = RedisOutage(enqueuer)
    try:
        assert await enqueuer.put(rec(0)) is False
        started = time.monotonic()
        for i in range(1, 20):
            assert await enqueuer.put(rec(i)) is False
        # The breaker is open: later records go straight to the spool, no Redis wait each.
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.1)
        assert segments(tmp_path)
        assert await inbox_ids(real_redis, queue_name) == []
        outage.down = False
        for _ in range(100):
            if len(await inbox_ids(real_redis, queue_name)) == 20 and not enqueuer.breaker_open:
                break
            await asyncio.sleep(0.05)
        assert await inbox_ids(real_redis, queue_name) == [f"call-{i}" for i in range(20)]
        assert not segments(tmp_path)
        assert await enqueuer.put(rec(20)) is True
    finally:
        await enqueuer.close()


async def test_a_new_process_replays_what_an_earlier_one_spooled_at_once(
    real_redis: Redis, queue_name: str, tmp_path: Path
) -> None:
    dead = Enqueuer("redis://127.0.0.1:1/0", queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    for i in range(5):
        await dead.put(rec(i))
    await dead.close()
    assert segments(tmp_path)

    # No put: starting is enough (a restarted proxy must not wait for its first request).
    fresh = Enqueuer(REAL_REDIS_URL, queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    try:
        for _ in range(200):
            if len(await inbox_ids(real_redis, queue_name)) == 5 and not segments(tmp_path):
                break
            await asyncio.sleep(0.05)
        assert await inbox_ids(real_redis, queue_name) == [f"call-{i}" for i in range(5)]
        assert not segments(tmp_path)
        assert await fresh.put(rec(5)) is True
    finally:
        await fresh.close()


async def test_a_full_spool_drops_loudly_and_never_raises(tmp_path: Path, caplog: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(recovery, "HOLD_MAX_BYTES", 0)  # nothing waits in memory either
    enqueuer = Enqueuer("redis://127.0.0.1:1/0", "akto:test:full", 0.05, tmp_path, 1024 * 1024)
    big = Record(id="big", mode="block", request_body={"text": "x" * 400_000})
    try:
        results = [await enqueuer.put(big.model_copy(update={"id": f"big-{i}"})) for i in range(4)]
    finally:
        await enqueuer.close()
    assert results == [False] * 4
    assert enqueuer._spool.dropped >= 1
    assert "spool full" in caplog.text and "DROPPED" in caplog.text


async def test_a_removed_spool_folder_is_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    enqueuer = Enqueuer("redis://127.0.0.1:1/0", "akto:test:gone", 0.05, folder, 10 * 1024 * 1024)
    try:
        assert await enqueuer.put(rec(0)) is False
        await enqueuer._spool.seal()
        shutil.rmtree(folder)
        assert await enqueuer.put(rec(1)) is False
    finally:
        await enqueuer.close()
    assert enqueuer._spool.dropped == 0
    assert [Record.from_json(line).id for s in segments(folder) for line in s.read_text().splitlines()] == ["call-1"]


async def test_a_segment_replayed_halfway_resumes_where_it_stopped(
    real_redis: Redis, queue_name: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    healthy = enqueuer._push_many
    state = {"down": True, "replayed_chunks": 0}

    async def fails_on_the_second_chunk(lines: list[str]) -> None:
        if state["down"]:
            raise RedisConnectionError("Redis is down")
        state["replayed_chunks"] += 1
        if state["replayed_chunks"] == 2:
            raise RedisConnectionError("Redis went away mid-replay")
        await healthy(lines)

    enqueuer._push_many = fails_on_the_second_chunk  # type: ignore[method-assign]
    try:
        for i in range(1200):  # more than two replay chunks of 500
            await enqueuer.put(rec(i))
        state["down"] = False
        for _ in range(200):
            if not enqueuer.breaker_open and len(await inbox_ids(real_redis, queue_name)) >= 1200:
                break
            await asyncio.sleep(0.05)
    finally:
        await enqueuer.close()
    assert await inbox_ids(real_redis, queue_name) == [f"call-{i}" for i in range(1200)], "nothing pushed twice"
    assert not segments(tmp_path)


async def test_a_sibling_sharing_the_folder_neither_holds_the_breaker_open_nor_loses_its_records(
    real_redis: Redis, queue_name: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    cut_off = Enqueuer("redis://127.0.0.1:1/0", queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    for i in range(5):
        assert await cut_off.put(rec(i)) is False
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    outage = RedisOutage(enqueuer)
    try:
        for i in range(5, 8):
            assert await enqueuer.put(rec(i)) is False
        outage.down = False
        for _ in range(200):
            if not enqueuer.breaker_open:
                break
            await asyncio.sleep(0.05)
        assert not enqueuer.breaker_open, "a live sibling's segments must not hold this breaker open"
        assert await inbox_ids(real_redis, queue_name) == ["call-5", "call-6", "call-7"]
        await cut_off.close()  # now its segments belong to nobody: the sibling replays them
        for _ in range(400):
            if len(await inbox_ids(real_redis, queue_name)) == 8:
                break
            await asyncio.sleep(0.05)
    finally:
        await cut_off.close()
        await enqueuer.close()
    assert sorted(await inbox_ids(real_redis, queue_name)) == [f"call-{i}" for i in range(8)]
    assert not segments(tmp_path)


async def test_close_lands_the_group_in_flight_and_the_one_behind_it(
    real_redis: Redis, queue_name: str, tmp_path: Path
) -> None:
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.5, tmp_path, 10 * 1024 * 1024)
    healthy = enqueuer._push_many

    pushes = 0

    async def slow(lines: list[str]) -> None:
        nonlocal pushes
        pushes += 1
        if pushes == 1:
            await asyncio.sleep(0.2)  # the first push is still in flight when shutdown begins
        await healthy(lines)

    enqueuer._push_many = slow  # type: ignore[method-assign]
    first = [asyncio.create_task(enqueuer.put(rec(i))) for i in range(10)]
    await asyncio.sleep(0.01)
    second = [asyncio.create_task(enqueuer.put(rec(i))) for i in range(10, 20)]
    await asyncio.sleep(0)
    await enqueuer.close()
    await asyncio.gather(*first, *second)
    assert await inbox_ids(real_redis, queue_name) == [f"call-{i}" for i in range(20)]
    assert not segments(tmp_path)


async def test_a_cancelled_caller_never_fails_another_in_its_group(
    real_redis: Redis, queue_name: str, tmp_path: Path
) -> None:
    # LiteLLM cancels a caller when it drops a during_call check, a client leaves, or at shutdown.
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 5.0, tmp_path, 10 * 1024 * 1024)
    healthy = enqueuer._push_many
    in_flight = asyncio.Event()
    release = asyncio.Event()
    groups: list[int] = []

    async def held(lines: list[str]) -> None:
        groups.append(len(lines))
        in_flight.set()
        await release.wait()
        await healthy(lines)

    enqueuer._push_many = held  # type: ignore[method-assign]
    try:
        cancelled = asyncio.create_task(enqueuer.put(rec(0)))
        other = asyncio.create_task(enqueuer.put(rec(1)))
        await asyncio.wait_for(in_flight.wait(), 2)
        assert groups == [2], "both records travel in one group"
        cancelled.cancel()
        await asyncio.sleep(0.05)
        assert cancelled.cancelled()
        assert not other.done(), "the other caller still waits for its group"
        release.set()
        assert await asyncio.wait_for(other, 2) is True
        # The cancelled caller stopped waiting; its record is written all the same.
        assert await inbox_ids(real_redis, queue_name) == ["call-0", "call-1"]
    finally:
        release.set()
        await enqueuer.close()


async def test_a_flush_cancelled_mid_push_answers_its_callers_at_once() -> None:
    spooled: list[Entry] = []
    writer = GroupWriter(lambda lines: asyncio.sleep(60), 30.0, lambda batch, exc: spooled.extend(batch))
    done = writer.add(asyncio.get_running_loop(), "{}", "call-0")
    flush = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.05)
    flush.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flush
    # Not after the group's 30 s timer: the records went to on_failure (the spool), so say so now.
    assert done.done() and done.result() is False
    assert spooled == [("{}", "call-0")]


SDK_SCRIPT = """
import asyncio, sys
from pathlib import Path
from akto_hook.recording.enqueue import Enqueuer
from akto_hook.recording.writer import Entry, GroupWriter
from akto_ingest.record import Record

async def main() -> None:
    enqueuer = Enqueuer(sys.argv[1], sys.argv[2], 0.05, Path(sys.argv[3]), 10_000_000)

    async def never_answers(lines: list[str]) -> None:
        await asyncio.sleep(3600)

    enqueuer._push_many = never_answers
    for i in range(5):
        asyncio.ensure_future(enqueuer.put(Record(id=f"call-{i}", mode="monitor", request_body={})))
    await asyncio.sleep(0)  # the script ends with its records in flight; nobody calls close()

asyncio.run(main())
"""


def test_records_in_flight_when_a_script_ends_are_spooled_for_the_next_process(queue_name: str, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", SDK_SCRIPT, REAL_REDIS_URL, queue_name, str(tmp_path)], check=True)
    spooled = [Record.from_json(line).id for s in sorted(segments(tmp_path)) for line in s.read_text().splitlines()]
    assert spooled == [f"call-{i}" for i in range(5)]
