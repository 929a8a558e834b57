"""Disk trouble under the spool and failing background work never stop records reaching Redis."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from akto_hook.recording import recovery
from akto_hook.recording import spool as spool_module
from akto_hook.recording.enqueue import Enqueuer
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record

from .conftest import REAL_REDIS_URL, RedisOutage

TINY_BYTES = 192 * 1024
WAIT_LIMIT = 30  # seconds; bounds a wait, not a latency under test


class _FullDisk:
    """``os`` as the spool sees it, on a disk that refuses writes past ``limit`` bytes (used where
    mounting a small tmpfs is not permitted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self.used + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used += len(data)
        return os.write(fd, data)


@pytest.fixture
def tiny_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 192 KiB filesystem: a real tmpfs when this runs as root, an injected full disk otherwise."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={TINY_BYTES}", "tmpfs", str(folder)]
    mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    if not mounted:
        monkeypatch.setattr(spool_module, "os", _FullDisk(TINY_BYTES))
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def rec(i: int, size: int = 900) -> Record:
    return Record(id=f"call-{i:04d}", mode="monitor", request_body={"text": "x" * size})


async def inbox_ids(redis: Redis, queue: str) -> list[str]:
    raws = await redis.lrange(inbox_key(queue), 0, -1)  # type: ignore[misc]  # redis-py types sync|async
    return [Record.from_json(raw).id for raw in raws]


async def wait_until_closed(enqueuer: Enqueuer) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while enqueuer.breaker_open:
        assert time.monotonic() < deadline, "the breaker never closed"
        await asyncio.sleep(0.02)


def segments(folder: Path) -> list[Path]:
    return list(folder.glob("*.jsonl"))


def failures(task: str) -> float:
    return REGISTRY.get_sample_value("akto_hook_task_failures_total", {"task": task}) or 0.0


@pytest.mark.parametrize("hold_bytes", [recovery.HOLD_MAX_BYTES, 20_000], ids=["held-in-memory", "hold-overflows"])
async def test_a_full_disk_never_stops_later_records_reaching_redis(
    real_redis: Redis,
    queue_name: str,
    tiny_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
    hold_bytes: int,
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(recovery, "HOLD_MAX_BYTES", hold_bytes)
    # The outage fails each write at once; the time limit only bounds the later writes to the real
    # Redis, which a loaded machine can hold past 50 ms (a put then spools, and this test is not about that).
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 2.0, tiny_disk, 10 * 1024 * 1024)
    outage = RedisOutage(enqueuer)
    try:
        with caplog.at_level(logging.CRITICAL, logger="akto_hook"):
            for i in range(400):
                assert await enqueuer.put(rec(i)) is False
                if i % 20 == 0:
                    await asyncio.sleep(0.01)  # let the spool's upkeep run, as a live proxy would
            await asyncio.sleep(0.2)
        assert "holding records in memory" in caplog.text  # the disk refused: loud at once
        if hold_bytes < 400 * 1000:  # the hold cannot take the rest: drops, counted and loud
            assert enqueuer._spool.dropped > 0
            assert "DROPPED" in caplog.text
        else:
            assert enqueuer._spool.dropped == 0
        outage.down = False
        await wait_until_closed(enqueuer)
        later = [await enqueuer.put(rec(i)) for i in range(400, 450)]
        assert later == [True] * 50
    finally:
        await enqueuer.close()
    ids = await inbox_ids(real_redis, queue_name)
    assert ids[-50:] == [f"call-{i:04d}" for i in range(400, 450)]
    assert len(ids) == 450 - enqueuer._spool.dropped, "every record not counted as dropped arrived"
    assert ids == sorted(ids), "capture order kept"
    assert not segments(tiny_disk)


async def test_background_failures_are_counted_and_the_work_goes_on(
    real_redis: Redis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(recovery, "PROBE_INTERVAL_SECONDS", 0.05)
    real_sync = spool_module._sync
    broken = {"sync": 1, "push": 1}

    def failing_sync(fd: int) -> int:
        if broken["sync"]:
            broken["sync"] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_sync(fd)

    monkeypatch.setattr(spool_module, "_sync", failing_sync)
    enqueuer = Enqueuer(REAL_REDIS_URL, queue_name, 0.05, tmp_path, 10 * 1024 * 1024)
    healthy = enqueuer._push_many

    async def buggy(lines: list[str]) -> None:
        if broken["push"]:
            broken["push"] -= 1
            raise RuntimeError("a bug, not a Redis error")
        await healthy(lines)

    enqueuer._push_many = buggy  # type: ignore[method-assign]
    before = failures("spool")
    try:
        assert await enqueuer.put(rec(0)) is False  # the bug: spooled, not lost
        for i in range(1, 10):
            await enqueuer.put(rec(i))
        deadline = time.monotonic() + WAIT_LIMIT
        while len(await inbox_ids(real_redis, queue_name)) < 10 or enqueuer.breaker_open:
            assert time.monotonic() < deadline, "records never reached Redis"
            await asyncio.sleep(0.05)
        assert await enqueuer.put(rec(10)) is True
    finally:
        await enqueuer.close()
    assert failures("spool") == before + 1
    assert "cannot fsync the spool" in caplog.text
    assert await inbox_ids(real_redis, queue_name) == [f"call-{i:04d}" for i in range(11)]
