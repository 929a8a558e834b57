"""The dead-letter store: put, list, get, replay and purge."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from akto_ingest import dlq
from akto_ingest.queue import dlq_index_key, dlq_key, inbox_key
from akto_ingest.record import now_ms

QUEUE = "akto:dlqtest"


def letter(record: str, record_id: str | None, failed_ms: int, **kw: Any) -> dlq.DeadLetter:
    made = dlq.make(record, record_id=record_id, reason=kw.pop("reason", "rejected"), **kw)
    return made.model_copy(update={"failed_ms": failed_ms})


def test_make_fills_every_field() -> None:
    before = now_ms()
    made = dlq.make(
        '{"id":"c1"}',
        record_id="c1",
        reason="rejected",
        detail="x" * 5000,
        attempts=3,
        created_ms=17,
        last_status=422,
    )
    assert made.id == "c1"
    assert made.record == '{"id":"c1"}'
    assert (made.reason, made.attempts, made.created_ms, made.last_status) == ("rejected", 3, 17, 422)
    assert made.detail == "x" * 1000  # detail is bounded
    assert before <= made.failed_ms <= now_ms()


def test_dead_letter_id_without_record_id_is_a_stable_hash() -> None:
    raw = "not a record"
    expected = "raw-" + hashlib.sha256(raw.encode()).hexdigest()[:24]
    assert dlq.dead_letter_id(None, raw) == expected
    assert dlq.dead_letter_id("", raw) == expected
    assert dlq.dead_letter_id("call-1", raw) == "call-1"


async def test_put_list_get_round_trip(fake_redis: Any) -> None:
    letters = [
        letter('{"id":"b"}', "b", 2_000, last_status=422, attempts=1),
        letter('{"id":"a"}', "a", 1_000),
        letter("garbage", None, 3_000, reason="invalid_record"),
    ]
    assert await dlq.put(fake_redis, QUEUE, letters) == 3
    assert await dlq.put(fake_redis, QUEUE, []) == 0

    assert await dlq.count(fake_redis, QUEUE) == 3
    ids = await dlq.list_ids(fake_redis, QUEUE)
    assert ids == ["a", "b", dlq.dead_letter_id(None, "garbage")]  # oldest failure first
    assert await dlq.list_ids(fake_redis, QUEUE, limit=1, offset=1) == ["b"]
    assert await dlq.all_ids(fake_redis, QUEUE) == ids

    got = await dlq.get_many(fake_redis, QUEUE, ["b", "missing", "a"])
    assert got == [letters[0], letters[1]]
    assert got[0].last_status == 422
    assert await dlq.get_many(fake_redis, QUEUE, []) == []


async def test_same_record_dead_lettered_twice_is_kept_once(fake_redis: Any) -> None:
    await dlq.put(fake_redis, QUEUE, [letter("r", "same", 1)])
    await dlq.put(fake_redis, QUEUE, [letter("r", "same", 2, reason="retries_exhausted")])
    assert await dlq.count(fake_redis, QUEUE) == 1
    [kept] = await dlq.get_many(fake_redis, QUEUE, ["same"])
    assert (kept.record, kept.reason) == ("r", "retries_exhausted")


async def test_different_records_with_one_call_id_are_each_kept(real_redis: Any, queue_name: str) -> None:
    # A client chooses its call id (x-litellm-call-id), so two records can share one.
    await dlq.put(real_redis, queue_name, [letter("first", "shared", 1), letter("second", "shared", 2)])
    await dlq.put(real_redis, queue_name, [letter("third", "shared", 3)])
    await dlq.put(real_redis, queue_name, [letter("second", "shared", 4, reason="retries_exhausted")])

    ids = await dlq.all_ids(real_redis, queue_name)
    kept = await dlq.get_many(real_redis, queue_name, ids)
    assert sorted(d.record for d in kept) == ["first", "second", "third"]
    assert ids[0] == "shared" and all(i.startswith("shared~") for i in ids[1:])
    assert [d.id for d in kept] == ids  # each entry names the id it is stored under
    assert next(d for d in kept if d.record == "second").reason == "retries_exhausted"
    assert await dlq.replay_all(real_redis, queue_name) == 3
    assert sorted(await real_redis.lrange(inbox_key(queue_name), 0, -1)) == [b"first", b"second", b"third"]


async def test_an_entry_that_cannot_be_read_does_not_stop_storing_under_its_id(
    real_redis: Any, queue_name: str
) -> None:
    await real_redis.hset(dlq_key(queue_name), "shared", "not an entry")
    await dlq.put(real_redis, queue_name, [letter("rec", "shared", 1)])
    [kept] = await dlq.get_many(real_redis, queue_name, await dlq.all_ids(real_redis, queue_name))
    assert kept.record == "rec" and kept.id.startswith("shared~")
    assert await real_redis.hget(dlq_key(queue_name), "shared") == b"not an entry"


async def test_replay_puts_records_back_with_their_replay_time_and_removes_entries(fake_redis: Any) -> None:
    record_a = '{"id":"a","mode":"block","request_body":{"x":"é/\\""}}'
    record_b = '{"id":"b","mode":"monitor"}'
    await fake_redis.rpush(inbox_key(QUEUE), "already-queued")
    await dlq.put(
        fake_redis,
        QUEUE,
        [letter(record_a, "a", 1), letter(record_b, "b", 2), letter("c", "c", 3)],
    )

    assert await dlq.replay(fake_redis, QUEUE, ["a", "b", "unknown"]) == 2

    inbox = [r.decode() for r in await fake_redis.lrange(inbox_key(QUEUE), 0, -1)]
    assert inbox[0] == "already-queued"
    for replayed, record in zip(inbox[1:], [record_a, record_b], strict=True):
        assert replayed.startswith(record[:-1] + ',"replayed_ms":')
        assert abs(json.loads(replayed).pop("replayed_ms") - now_ms()) < 5_000
        assert {k: v for k, v in json.loads(replayed).items() if k != "replayed_ms"} == json.loads(record)
    assert await dlq.all_ids(fake_redis, QUEUE) == ["c"]
    assert await dlq.count(fake_redis, QUEUE) == 1
    assert await dlq.replay(fake_redis, QUEUE, ["a"]) == 0
    assert await fake_redis.llen(inbox_key(QUEUE)) == 3


async def test_replay_with_real_redis_transaction(real_redis: Any, queue_name: str) -> None:
    await dlq.put(real_redis, queue_name, [letter("rec-1", "r1", 1), letter("rec-2", "r2", 2)])
    assert await dlq.replay(real_redis, queue_name, await dlq.all_ids(real_redis, queue_name)) == 2
    assert await real_redis.lrange(inbox_key(queue_name), 0, -1) == [b"rec-1", b"rec-2"], "not JSON: byte for byte"
    assert await real_redis.exists(dlq_key(queue_name), dlq_index_key(queue_name)) == 0


async def test_purge_deletes_entries_and_reports_how_many(fake_redis: Any) -> None:
    await dlq.put(fake_redis, QUEUE, [letter("1", "a", 1), letter("2", "b", 2), letter("3", "c", 3)])
    assert await dlq.purge(fake_redis, QUEUE, ["a", "nope"]) == 1
    assert await dlq.purge(fake_redis, QUEUE, []) == 0
    assert await dlq.all_ids(fake_redis, QUEUE) == ["b", "c"]
    assert await dlq.purge(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE)) == 2
    assert await dlq.count(fake_redis, QUEUE) == 0
    assert await fake_redis.zcard(dlq_index_key(QUEUE)) == 0
    assert await fake_redis.llen(inbox_key(QUEUE)) == 0  # purge never queues anything


async def test_full_cycle_put_list_replay_purge(fake_redis: Any) -> None:
    await dlq.put(fake_redis, QUEUE, [letter("keep", "k", 1), letter("drop", "d", 2)])
    assert await dlq.purge(fake_redis, QUEUE, ["d"]) == 1
    assert await dlq.replay(fake_redis, QUEUE, ["k"]) == 1
    assert await fake_redis.lrange(inbox_key(QUEUE), 0, -1) == [b"keep"]
    assert await dlq.count(fake_redis, QUEUE) == 0
    assert await dlq.list_ids(fake_redis, QUEUE) == []


async def test_concurrent_replays_queue_a_record_once(fake_redis: Any) -> None:
    # Two operators running `akto-ingest dlq replay --all` at once.
    await dlq.put(fake_redis, QUEUE, [letter("rec", "r1", 1)])
    done = await asyncio.gather(dlq.replay(fake_redis, QUEUE, ["r1"]), dlq.replay(fake_redis, QUEUE, ["r1"]))
    assert await fake_redis.lrange(inbox_key(QUEUE), 0, -1) == [b"rec"]
    assert sum(done) == 1


def _spy_evals(redis: Any) -> list[int]:
    """Record how many ids each replay script call carries."""
    sizes: list[int] = []
    original = redis.eval

    async def eval_spy(script: str, numkeys: int, *keys_and_args: Any) -> Any:
        sizes.append(len(keys_and_args) - numkeys)
        return await original(script, numkeys, *keys_and_args)

    redis.eval = eval_spy
    return sizes


async def test_replay_all_moves_a_store_larger_than_a_chunk_in_bounded_calls(real_redis: Any, queue_name: str) -> None:
    total = dlq.CHUNK * 2 + 7
    await dlq.put(real_redis, queue_name, [letter(f"rec-{n}", f"id-{n}", n + 1) for n in range(total)])
    sizes = _spy_evals(real_redis)

    assert await dlq.replay_all(real_redis, queue_name) == total

    assert sizes and max(sizes) <= dlq.CHUNK, "no single script call over every id"
    assert len(sizes) >= 3
    inbox = [r.decode() for r in await real_redis.lrange(inbox_key(queue_name), 0, -1)]
    assert inbox == [f"rec-{n}" for n in range(total)]  # oldest failure first, each once
    assert await real_redis.exists(dlq_key(queue_name), dlq_index_key(queue_name)) == 0


async def test_two_operators_replaying_everything_at_once_queue_each_record_once(
    real_redis: Any, queue_name: str
) -> None:
    total = dlq.CHUNK * 3
    await dlq.put(real_redis, queue_name, [letter(f"rec-{n}", f"id-{n}", n + 1) for n in range(total)])

    done = await asyncio.gather(dlq.replay_all(real_redis, queue_name), dlq.replay_all(real_redis, queue_name))

    assert sum(done) == total
    inbox = [r.decode() for r in await real_redis.lrange(inbox_key(queue_name), 0, -1)]
    assert sorted(inbox) == sorted(f"rec-{n}" for n in range(total))
    assert len(set(inbox)) == total


async def test_replay_all_ends_when_records_fail_again_during_the_replay(real_redis: Any, queue_name: str) -> None:
    # A worker dead-letters replayed records again while the replay runs (Akto still refuses them):
    # they come back with a later failure time and must not be replayed by the same run forever.
    await dlq.put(real_redis, queue_name, [letter(f"rec-{n}", f"id-{n}", n + 1) for n in range(dlq.CHUNK + 1)])
    original = real_redis.eval

    async def refused_again(script: str, numkeys: int, *keys_and_args: Any) -> Any:
        moved = await original(script, numkeys, *keys_and_args)
        ids = keys_and_args[numkeys:]
        await dlq.put(real_redis, queue_name, [dlq.make(f"rec-{i}", record_id=i, reason="rejected") for i in ids])
        return moved

    real_redis.eval = refused_again
    assert await dlq.replay_all(real_redis, queue_name) == dlq.CHUNK + 1
    assert await dlq.count(real_redis, queue_name) == dlq.CHUNK + 1  # failed again, kept for the next replay


async def test_replay_drops_an_index_entry_whose_letter_is_gone(fake_redis: Any) -> None:
    await dlq.put(fake_redis, QUEUE, [letter("rec", "r1", 1), letter("orphan", "r2", 2)])
    await fake_redis.hdel(dlq_key(QUEUE), "r2")
    assert await dlq.replay_all(fake_redis, QUEUE) == 1
    assert await fake_redis.zcard(dlq_index_key(QUEUE)) == 0


async def test_purge_all_deletes_in_chunks(real_redis: Any, queue_name: str) -> None:
    total = dlq.CHUNK + 3
    await dlq.put(real_redis, queue_name, [letter(f"rec-{n}", f"id-{n}", n + 1) for n in range(total)])
    assert await dlq.purge_all(real_redis, queue_name) == total
    assert await dlq.count(real_redis, queue_name) == 0
    assert await real_redis.llen(inbox_key(queue_name)) == 0


async def test_replay_all_replays_each_record_once_when_the_workers_clock_lags(
    real_redis: Any, queue_name: str
) -> None:
    # A worker whose clock is 60 s behind the operator's host dead-letters the replayed record again.
    await dlq.put(real_redis, queue_name, [dlq.make("rec", record_id="r1", reason="rejected")])
    original = real_redis.eval
    refusals = 0

    async def refused_again_by_a_lagging_worker(script: str, numkeys: int, *keys_and_args: Any) -> Any:
        nonlocal refusals
        moved = await original(script, numkeys, *keys_and_args)
        if refusals < 3:  # bounded here; in production it repeats for as long as the skew
            refusals += 1
            again = dlq.make("rec", record_id="r1", reason="rejected")
            await dlq.put(real_redis, queue_name, [again.model_copy(update={"failed_ms": now_ms() - 60_000})])
        return moved

    real_redis.eval = refused_again_by_a_lagging_worker
    replayed = await dlq.replay_all(real_redis, queue_name)
    assert (replayed, await real_redis.llen(inbox_key(queue_name))) == (1, 1)
