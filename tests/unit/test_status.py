"""``akto-ingest status`` and the worker's Redis durability warnings."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from akto_ingest import dlq
from akto_ingest.cli import main, status
from akto_ingest.queue import (
    REPORT_KEEP_MS,
    Claimer,
    backlog,
    born_key,
    dlq_index_key,
    dlq_key,
    enqueue_batch,
    heartbeat_key,
    inbox_key,
    job_done,
    report,
    spool_status_key,
)
from akto_ingest.record import Record
from akto_worker.lifecycle import check_redis_durability

from .conftest import REAL_REDIS_URL


async def test_status_counts_every_place_a_record_can_be(real_redis: Any, queue_name: str) -> None:
    old = Record(id="old", mode="block", created_ms=int(time.time() * 1000) - 120_000)
    await real_redis.rpush(inbox_key(queue_name), old.to_json(), Record(id="new", mode="block").to_json())
    await enqueue_batch(real_redis, queue_name, ["{}"], attempt=0, defer_ms=0, ttl_ms=60_000)
    await enqueue_batch(real_redis, queue_name, ["{}"], attempt=1, defer_ms=600_000, ttl_ms=60_000)
    await dlq.put(real_redis, queue_name, [dlq.make("{}", record_id="dead", reason="rejected")])
    now = int(time.time() * 1000)
    await real_redis.hset(heartbeat_key(queue_name), mapping={"host:1": now, "host:2": now - 120_000})
    await real_redis.hset(spool_status_key(queue_name), "proxy:7", json.dumps({"bytes": 42, "dropped": 0}))

    result: dict[str, Any] = await status(real_redis, queue_name)

    assert result["inbox"] == 2
    assert result["ready_jobs"] == 1
    assert result["deferred_jobs"] == 1
    assert result["dead_letters"] == 1
    assert 119 <= result["oldest_age_seconds"] <= 130
    assert result["workers"]["host:1"].startswith("seen 0 s ago")
    assert result["workers"]["host:2"].endswith("(stale)")
    assert result["spools"] == {"proxy:7": {"bytes": 42, "dropped": 0}}
    await real_redis.delete(heartbeat_key(queue_name), spool_status_key(queue_name))


def _captured(ago_s: int, call_id: str) -> str:
    return Record(id=call_id, mode="block", created_ms=int(time.time() * 1000) - ago_s * 1000).to_json()


async def test_oldest_age_counts_from_capture_while_retries_wait_in_the_future(
    real_redis: Any, queue_name: str
) -> None:
    # Akto down for an hour: the records captured then wait in a retry job due in five minutes. The
    # job's score in arq's queue is that future run time; the age must come from the records.
    await enqueue_batch(
        real_redis, queue_name, [_captured(600, "b"), _captured(3600, "a")], attempt=12, defer_ms=300_000, ttl_ms=60_000
    )
    result: dict[str, Any] = await status(real_redis, queue_name)
    assert result["deferred_jobs"] == 1
    assert 3599 <= result["oldest_age_seconds"] <= 3610


async def test_a_claimed_job_is_born_with_its_oldest_record_and_leaves_the_index_when_done(
    real_redis: Any, queue_name: str
) -> None:
    await real_redis.rpush(inbox_key(queue_name), _captured(30, "new"), _captured(900, "replayed"))
    assert await Claimer(real_redis, queue_name, batch_size=10, job_ttl_ms=60_000).claim() == 2
    ((job_id, born),) = await real_redis.zrange(born_key(queue_name), 0, -1, withscores=True)
    assert abs(time.time() * 1000 - born - 900_000) < 10_000
    assert 899 <= (await status(real_redis, queue_name))["oldest_age_seconds"] <= 910

    await job_done(real_redis, queue_name, job_id.decode())
    await real_redis.zrem(queue_name, job_id)
    assert await real_redis.zcard(born_key(queue_name)) == 0
    assert (await status(real_redis, queue_name))["oldest_age_seconds"] is None


async def test_a_born_entry_whose_job_is_gone_is_skipped(real_redis: Any, queue_name: str) -> None:
    stale = await enqueue_batch(real_redis, queue_name, [_captured(7200, "gone")], attempt=1, defer_ms=0, ttl_ms=60_000)
    await enqueue_batch(real_redis, queue_name, [_captured(60, "live")], attempt=1, defer_ms=0, ttl_ms=60_000)
    await real_redis.zrem(queue_name, stale)  # finished, but its job_done write was lost
    assert 59 <= (await status(real_redis, queue_name))["oldest_age_seconds"] <= 70
    assert await real_redis.zscore(born_key(queue_name), stale) is None


class _Config:
    def __init__(self, **values: str) -> None:
        self.values = values

    async def config_get(self, name: str) -> dict[str, str]:
        return {name: self.values[name]}


async def test_worker_warns_about_eviction_and_missing_persistence() -> None:
    config: Any = _Config(**{"maxmemory-policy": "volatile-lru", "appendonly": "no", "save": ""})
    warnings = await check_redis_durability(config)
    assert len(warnings) == 2
    assert "maxmemory-policy is 'volatile-lru'" in warnings[0] and "noeviction" in warnings[0]
    assert "persistence is off" in warnings[1]


async def test_durable_redis_gets_no_warning() -> None:
    config: Any = _Config(**{"maxmemory-policy": "noeviction", "appendonly": "yes", "save": ""})
    assert await check_redis_durability(config) == []


def test_cli_replays_a_store_larger_than_a_chunk(queue_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    total = dlq.CHUNK + 5
    redis = SyncRedis.from_url(REAL_REDIS_URL, socket_connect_timeout=1)
    try:
        try:
            redis.ping()
        except (RedisError, OSError) as exc:
            pytest.skip(f"no Redis answers at {REAL_REDIS_URL}: {exc}")
        letters = [dlq.make(f"rec-{n}", record_id=f"id-{n}", reason="rejected") for n in range(total)]
        redis.hset(dlq_key(queue_name), mapping={d.id: d.model_dump_json() for d in letters})
        redis.zadd(dlq_index_key(queue_name), {d.id: d.failed_ms for d in letters})

        code = main(["--redis-url", REAL_REDIS_URL, "--queue", queue_name, "dlq", "replay", "--all", "--json"])

        assert code == 0
        assert json.loads(capsys.readouterr().out) == {"replayed": total}
        assert redis.llen(inbox_key(queue_name)) == total
        assert redis.hlen(dlq_key(queue_name)) == 0
    finally:
        redis.delete(inbox_key(queue_name), dlq_key(queue_name), dlq_index_key(queue_name))
        redis.close()


async def test_status_counts_only_its_own_queues_jobs_in_progress(real_redis: Any, queue_name: str) -> None:
    # Another queue's worker running a job on the same Redis (README: a queue per group of proxies).
    other = f"{queue_name}:other"
    mine = await enqueue_batch(real_redis, queue_name, ["{}"], attempt=0, defer_ms=0, ttl_ms=60_000)
    theirs = await enqueue_batch(real_redis, other, ["{}"], attempt=0, defer_ms=0, ttl_ms=60_000)
    await real_redis.psetex(in_progress_key_prefix + mine, 60_000, b"1")
    await real_redis.psetex(in_progress_key_prefix + theirs, 60_000, b"1")
    try:
        result: dict[str, Any] = await status(real_redis, queue_name)
    finally:
        await real_redis.delete(
            other, job_key_prefix + theirs, in_progress_key_prefix + mine, in_progress_key_prefix + theirs
        )
    assert result["in_progress_jobs"] == 1
    assert result["ready_jobs"] == 0, "a running job is counted once, as in progress"


async def test_the_backlog_counts_a_running_job_once(real_redis: Any, queue_name: str) -> None:
    running = await enqueue_batch(real_redis, queue_name, ["{}"], attempt=0, defer_ms=0, ttl_ms=60_000)
    await enqueue_batch(real_redis, queue_name, ["{}"], attempt=0, defer_ms=0, ttl_ms=60_000)
    await enqueue_batch(real_redis, queue_name, ["{}"], attempt=1, defer_ms=600_000, ttl_ms=60_000)
    await real_redis.psetex(in_progress_key_prefix + running, 60_000, b"1")
    try:
        waiting = await backlog(real_redis, queue_name)
    finally:
        await real_redis.delete(in_progress_key_prefix + running)
    assert (waiting.ready_jobs, waiting.running_jobs, waiting.deferred_jobs) == (1, 1, 1)


async def test_per_process_hashes_drop_processes_gone_for_an_hour_and_expire(real_redis: Any, queue_name: str) -> None:
    now = int(time.time() * 1000)
    workers, spools = heartbeat_key(queue_name), spool_status_key(queue_name)
    try:
        # Restarted processes leave their entries behind (each start is a new host:pid).
        await real_redis.hset(workers, mapping={"gone:1": now - REPORT_KEEP_MS - 1, "recent:2": now - 120_000})
        await real_redis.hset(spools, "gone:1", json.dumps({"bytes": 1, "dropped": 0, "updated_ms": 1}))
        await real_redis.hset(spools, "recent:2", json.dumps({"bytes": 1, "dropped": 0, "updated_ms": now - 1000}))

        await report(real_redis, workers, "me:3", str(now))
        await report(real_redis, spools, "me:3", json.dumps({"bytes": 0, "dropped": 0, "updated_ms": now}))

        for key in (workers, spools):
            assert sorted(k.decode() for k in await real_redis.hkeys(key)) == ["me:3", "recent:2"]
            assert 0 < await real_redis.pttl(key) <= REPORT_KEEP_MS
        assert sorted((await status(real_redis, queue_name))["workers"]) == ["me:3", "recent:2"]
    finally:
        await real_redis.delete(workers, spools)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_dlq_list_refuses_a_limit_that_is_not_positive(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Redis reads a ZRANGE stop of -1 as "to the end": --limit 0 listed every dead letter, records and all.
    with pytest.raises(SystemExit) as exited:
        main(["--redis-url", "redis://127.0.0.1:1/0", "dlq", "list", "--limit", limit])
    assert exited.value.code == 2
    assert f"{limit!r} is not a positive whole number" in capsys.readouterr().err
