"""The breaker closes under load: a Redis stall while records keep coming at well over 1,000 a second."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from akto_hook.recording import recovery, spool
from akto_hook.recording.enqueue import Enqueuer
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record
from tests.stack import new_redis

# Two records every millisecond (about 2,000 a second here): evenly spread, so records keep
# arriving while the spool is replayed, as they do in a busy proxy.
RATE_PER_TICK = 2
TICK = 0.001
WAIT_LIMIT = 30  # seconds; a bound on the wait, not a latency under test


def segments(folder: Path) -> list[Path]:
    return list(folder.glob("*.jsonl"))


def first_seen(ids: list[str]) -> list[str]:
    """Ids in order of first appearance (a push cut off by the stall may land, then be replayed)."""
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)


@pytest.mark.parametrize("segment_bytes", [spool.SEGMENT_BYTES, 64 * 1024], ids=["one-segment", "many-segments"])
async def test_a_redis_stall_under_load_closes_the_breaker_empties_the_spool_and_keeps_order(
    tmp_path: Path, segment_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small segments make the outage rotate several times and the close go through rotations too.
    monkeypatch.setattr(spool, "SEGMENT_BYTES", segment_bytes)
    monkeypatch.setattr(recovery, "DRAIN_MAX_BYTES", min(recovery.DRAIN_MAX_BYTES, segment_bytes // 4))
    server = new_redis(tmp_path)
    spool_dir = tmp_path / "spool"
    queue = "akto:test:stall"
    enqueuer = Enqueuer(server.url, queue, 0.05, spool_dir, 512 * 1024 * 1024)
    redis = Redis.from_url(server.url)
    produced: list[str] = []
    pending: set[asyncio.Task[bool]] = set()
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            for _ in range(RATE_PER_TICK):
                record = Record(id=f"r-{len(produced):07d}", mode="monitor", request_body={"n": len(produced)})
                produced.append(record.id)
                task = asyncio.create_task(enqueuer.put(record))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(TICK)

    async def wait_for_breaker(open_: bool, what: str) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while enqueuer.breaker_open is not open_:
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    assert server.proc is not None
    started = time.monotonic()
    producer = asyncio.create_task(produce())
    try:
        try:
            await asyncio.sleep(0.5)
            server.proc.popen.send_signal(signal.SIGSTOP)
            await wait_for_breaker(True, "the breaker to open")
            await asyncio.sleep(1.0)
            server.proc.popen.send_signal(signal.SIGCONT)
            answered = time.monotonic()
            stalled_records = len(produced)
            # The load goes on: the breaker must close while records keep coming.
            await wait_for_breaker(False, "the breaker to close under load")
            closed_after = time.monotonic() - answered
            await asyncio.sleep(0.5)  # records after the close go straight to Redis again
            assert len(produced) > stalled_records
        finally:
            server.proc.popen.send_signal(signal.SIGCONT)
            stop.set()
            await producer
            await asyncio.gather(*pending)
            await enqueuer.close()
        raws = await redis.lrange(inbox_key(queue), 0, -1)
        ids = [Record.from_json(raw).id for raw in raws]
        assert first_seen(ids) == produced, "every record once, in capture order"
        assert not segments(spool_dir), "the spool is empty"
        rate = len(produced) / (time.monotonic() - started)
        print(f"\nbreaker closed {closed_after:.2f} s after Redis answered; {len(produced)} records, {rate:.0f}/s")
    finally:
        await redis.aclose()
        server.stop()
