"""The arq job functions: retries become deferred jobs, dead letters land in the store."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

import fakeredis
import orjson
import pytest
from arq import Retry
from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from akto_ingest import dlq, violations
from akto_ingest.config import WorkerConfig
from akto_ingest.errors import ConfigError
from akto_ingest.queue import DEAD_LETTER_FUNCTION, DELIVER_FUNCTION, born_key, decode_job
from akto_ingest.record import Record, now_ms
from akto_worker import jobs
from akto_worker.deadline import JobLimits, job_limits
from akto_worker.delivery import Deliverer, Outcome
from akto_worker.state import WorkerState
from tests.fake_akto import FakeAkto

from .conftest import REAL_REDIS_URL

MakeDeliverer = Callable[..., Deliverer]
Factory = Callable[..., Any]
QUEUE = "akto:jobs"

CONFIG = {"backoff_base": 1.0, "backoff_max": 20.0, "retention_seconds": 3600}


def make_ctx(
    redis: Any, deliverer: Deliverer, queue: str = QUEUE, job_try: int = 1, job_id: str = "job-1"
) -> dict[str, Any]:
    state = WorkerState(deliverer, WorkerConfig.load(CONFIG, env={}), queue)
    return {"redis": redis, "akto": state, "job_try": job_try, "job_id": job_id}


async def queued_jobs(redis: Any, queue: str = QUEUE) -> list[tuple[float, dict[str, Any], int]]:
    """(run-at score, decoded job, key ttl ms) of every job in the arq queue."""
    out = []
    for job_id, score in await redis.zrange(queue, 0, -1, withscores=True):
        key = job_key_prefix + job_id.decode()
        out.append((score, decode_job(await redis.get(key)), await redis.pttl(key)))
    return out


async def test_all_delivered_leaves_nothing_behind(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    records = [record_json(id="a"), record_json(id="b", mode="monitor")]

    result = await jobs.deliver(ctx, records, 0)

    assert result == {"delivered": 2, "retried": 0, "dead_lettered": 0}
    assert await fake_redis.zcard(QUEUE) == 0
    assert await dlq.count(fake_redis, QUEUE) == 0
    assert sorted(fake_akto.message_ids()) == ["a", "b"]


async def test_violations_found_are_kept_in_the_log(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    records = [
        record_json(id="blk", status_code=400, blocked_reason="Prompt injection detected"),
        record_json(id="mon", mode="monitor", prompt="ignore previous instructions"),
        record_json(id="fine", mode="monitor"),
    ]
    await jobs.deliver(ctx, records, 0)
    kept = await violations.recent(fake_redis, QUEUE)
    assert sorted((v.call_id, v.mode) for v in kept) == [("blk", "blocked"), ("mon", "flagged")]


@pytest.mark.parametrize(("attempt", "low_ms", "high_ms"), [(0, 500, 1_000), (3, 4_000, 8_000), (9, 10_000, 20_000)])
async def test_retries_become_one_deferred_job(
    fake_akto: FakeAkto,
    make_deliverer: MakeDeliverer,
    record_json: Factory,
    fake_redis: Any,
    attempt: int,
    low_ms: int,
    high_ms: int,
) -> None:
    fake_akto.configure(status=503)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    records = [record_json(id=f"r{i}") for i in range(4)]

    before = now_ms()
    result = await jobs.deliver(ctx, records, attempt)
    after = now_ms()

    assert result == {"delivered": 0, "retried": 4, "dead_lettered": 0}
    [(score, job, ttl)] = await queued_jobs(fake_redis)
    assert job["f"] == DELIVER_FUNCTION
    assert sorted(job["a"][0]) == sorted(records)
    assert job["a"][1] == attempt + 1
    assert before + low_ms <= score <= after + high_ms
    # fakeredis's expiry clock lags, so the TTL's lower bound is checked on real Redis below.
    assert 0 < ttl <= ctx["akto"].job_ttl_ms + high_ms
    assert await dlq.count(fake_redis, QUEUE) == 0


async def test_the_retry_job_delivers_once_akto_recovers(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    fake_akto.configure(status=503)
    await jobs.deliver(ctx, [record_json(id="r1"), record_json(id="r2")], 0)
    [(_, job, _)] = await queued_jobs(fake_redis)

    fake_akto.configure(status=None)
    result = await jobs.deliver(ctx, *job["a"])

    assert result == {"delivered": 2, "retried": 0, "dead_lettered": 0}
    assert sorted(fake_akto.message_ids()) == ["r1", "r2"]


async def test_the_born_index_follows_records_from_job_to_retry_job_to_done(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    records = [record_json(id="r1", created_ms=now_ms() - 5_000), record_json(id="r2", created_ms=now_ms() - 9_000)]
    await fake_redis.zadd(born_key(QUEUE), {"job-1": now_ms()})  # as the claim script writes it
    fake_akto.configure(status=503)
    await jobs.deliver(make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_id="job-1"), records, 0)
    [(retry_id, born)] = await fake_redis.zrange(born_key(QUEUE), 0, -1, withscores=True)
    assert retry_id != b"job-1" and born == created_ms_of(records, "r2")

    fake_akto.configure(status=None)
    [(_, job, _)] = await queued_jobs(fake_redis)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_id=retry_id.decode())
    await jobs.deliver(ctx, *job["a"])
    assert await fake_redis.zcard(born_key(QUEUE)) == 0


def created_ms_of(records: list[str], call_id: str) -> int:
    return next(int(json.loads(r)["created_ms"]) for r in records if json.loads(r)["id"] == call_id)


async def test_rejected_records_land_in_the_dlq(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    fake_akto.configure(status=422)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    records = {f"r{i}": record_json(id=f"r{i}") for i in range(3)}

    result = await jobs.deliver(ctx, list(records.values()), 2)

    assert result == {"delivered": 0, "retried": 0, "dead_lettered": 3}
    assert await fake_redis.zcard(QUEUE) == 0
    letters = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert {d.id: (d.record, d.reason, d.last_status, d.attempts) for d in letters} == {
        rid: (raw, "rejected", 422, 3) for rid, raw in records.items()
    }


async def test_rejected_records_sharing_a_call_id_are_all_kept(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    fake_akto.configure(status=401)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    first = record_json(id="client-chosen", prompt="first request")
    second = record_json(id="client-chosen", prompt="second request")

    await jobs.deliver(ctx, [first], 0)
    await jobs.deliver(ctx, [second], 0)

    letters = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert sorted(d.record for d in letters) == sorted([first, second])


async def test_mixed_outcomes_are_split_between_retry_job_and_dlq(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    fake_akto.configure(status=503)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    good = record_json(id="good")

    result = await jobs.deliver(ctx, [good, "not json"], 0)

    assert result == {"delivered": 0, "retried": 1, "dead_lettered": 1}
    [(_, job, _)] = await queued_jobs(fake_redis)
    assert job["a"] == [[good], 1]
    [letter] = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert (letter.record, letter.reason) == ("not json", "invalid_record")


async def test_retry_and_dlq_with_real_redis_transactions(
    fake_akto: FakeAkto,
    make_deliverer: MakeDeliverer,
    record_json: Factory,
    real_redis: Redis,
    queue_name: str,
) -> None:
    fake_akto.configure(status=503)
    ctx = make_ctx(real_redis, make_deliverer(fake_akto.url, **CONFIG), queue=queue_name)
    good = record_json(id="good")

    assert await jobs.deliver(ctx, [good, "{}"], 0) == {"delivered": 0, "retried": 1, "dead_lettered": 1}

    [(score, job, ttl)] = await queued_jobs(real_redis, queue_name)
    assert job["a"] == [[good], 1]
    defer_ms = score - job["et"]
    assert 450 <= defer_ms <= 1_000  # backoff of attempt 0 with base 1 s: 0.5-1 s
    # The job key outlives its wait plus the retention period.
    assert ctx["akto"].job_ttl_ms < ttl <= ctx["akto"].job_ttl_ms + 1_000
    assert await dlq.count(real_redis, queue_name) == 1


async def test_crash_looping_batch_is_dead_lettered_without_delivery(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_try=jobs.MAX_JOB_RUNS + 1)
    records = [record_json(id="a"), record_json(id="b")]

    result = await jobs.deliver(ctx, records, 0)

    assert result == {"dead_lettered": 2}
    assert fake_akto.stats()["requests_total"] == 0
    assert await fake_redis.zcard(QUEUE) == 0
    letters = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert sorted(d.record for d in letters) == sorted(records)
    assert {d.reason for d in letters} == {"worker_crash_loop"}
    assert {d.detail for d in letters} == {f"batch ran {jobs.MAX_JOB_RUNS} times"}


async def test_crash_loop_dead_letters_are_keyed_by_call_id(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, make_record: Factory, fake_redis: Any
) -> None:
    record = make_record(id="call-crash")
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_try=jobs.MAX_JOB_RUNS + 1)

    await jobs.deliver(ctx, [record.to_json()], 3)

    assert await dlq.all_ids(fake_redis, QUEUE) == ["call-crash"]
    [letter] = await dlq.get_many(fake_redis, QUEUE, ["call-crash"])
    assert letter.created_ms == record.created_ms


async def test_last_allowed_run_still_delivers(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_try=jobs.MAX_JOB_RUNS)
    assert await jobs.deliver(ctx, [record_json(id="a")], 0) == {
        "delivered": 1,
        "retried": 0,
        "dead_lettered": 0,
    }


async def test_dead_letter_job_stores_raw_text(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, fake_redis: Any
) -> None:
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    raw = '{"f": "something_else", "a": []}'

    result = await jobs.dead_letter_job(ctx, base64.b64encode(raw.encode()).decode(), "not ours")

    assert result == {"dead_lettered": 1}
    [letter] = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert letter.record == raw
    assert letter.reason == "undecodable_job"
    assert letter.detail == "not ours"
    assert letter.id == dlq.dead_letter_id(None, raw)
    assert fake_akto.records == []


async def test_a_deliver_job_with_arguments_this_version_does_not_take_keeps_each_record(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    # A newer worker's job (an extra keyword) met by this one: not run, not deleted, and each record
    # kept on its own, so a replay queues them as records this version delivers.
    records = [record_json(id="a"), record_json(id="b")]
    raw = orjson.dumps({"f": "deliver", "a": [records, 0], "k": {"priority": 1}, "t": 1, "et": 1})
    job = decode_job(raw)
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))

    assert await jobs.dead_letter_job(ctx, *job["a"]) == {"dead_lettered": 2}

    letters = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert sorted((d.id, d.record, d.reason) for d in letters) == [
        ("a", records[0], "unrunnable_job"),
        ("b", records[1], "unrunnable_job"),
    ]
    assert all("takes no keyword arguments" in d.detail for d in letters)
    assert fake_akto.records == []
    assert await dlq.replay_all(fake_redis, QUEUE) == 2
    replayed = [Record.from_json(r) for r in await fake_redis.lrange(f"{QUEUE}:inbox", 0, -1)]
    assert [r.id for r in replayed] == ["a", "b"]


async def test_a_crash_looping_batch_with_a_record_no_parser_takes_dead_letters_every_record(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    deep = '{"v":1,"id":"deep","mode":"monitor","created_ms":5,"request_body":' + "[" * 3000 + "]" * 3000 + "}"
    records = [record_json(id="a"), deep]
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG), job_try=jobs.MAX_JOB_RUNS + 1)

    assert await jobs.deliver(ctx, records, 0) == {"dead_lettered": 2}

    letters = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert sorted((d.id, d.record, d.created_ms) for d in letters)[1] == ("deep", deep, 5)


async def test_pickled_job_ends_in_the_dlq_as_base64(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, fake_redis: Any
) -> None:
    # The path a pickled payload takes in the worker: decode_job, then the dead-letter function.
    raw = pickle.dumps({"f": "deliver", "a": [["r"], 0]}, protocol=pickle.HIGHEST_PROTOCOL)
    job = decode_job(raw)
    assert job["f"] == DEAD_LETTER_FUNCTION
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))

    await jobs.dead_letter_job(ctx, *job["a"])

    [letter] = await dlq.get_many(fake_redis, QUEUE, await dlq.all_ids(fake_redis, QUEUE))
    assert letter.record == "base64:" + base64.b64encode(raw).decode()
    assert base64.b64decode(letter.record.removeprefix("base64:")) == raw
    assert "not JSON" in letter.detail


async def test_redis_failure_while_persisting_asks_arq_to_rerun(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory
) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    broken = fakeredis.FakeAsyncRedis(server=server)
    fake_akto.configure(status=503)
    ctx = make_ctx(broken, make_deliverer(fake_akto.url, **CONFIG))

    with pytest.raises(Retry) as info:
        await jobs.deliver(ctx, [record_json(id="a")], 0)
    assert info.value.defer_score == 5_000


class CutAfter(Redis):
    """A real Redis client whose round trips after the first ``allowed`` fail: the connection drops in
    the middle of a job's persist step."""

    allowed = 0

    def _trip(self) -> None:
        if self.allowed <= 0:
            raise RedisConnectionError("connection dropped")
        self.allowed -= 1

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self._trip()
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def cut(raise_on_error: bool = True) -> Any:
            if pipe.command_stack:
                self._trip()
            return await execute(raise_on_error)

        pipe.execute = cut  # type: ignore[method-assign]
        return pipe


async def test_a_batch_is_persisted_whole_or_not_at_all(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, real_redis: Any, queue_name: str
) -> None:
    # One record to retry (Akto answers 503 for it), one dead letter (an invalid record): a connection
    # that carries one round trip and drops must not leave the retry job stored without the dead
    # letter, or the re-run would deliver the batch again and queue a second retry job.
    fake_akto.configure(status=503)
    redis = CutAfter.from_url(REAL_REDIS_URL)
    ctx = make_ctx(redis, make_deliverer(fake_akto.url, **CONFIG), queue=queue_name)
    try:
        redis.allowed = 1
        await jobs.deliver(ctx, [record_json(id="a"), "not a record"], 0)
    finally:
        await redis.aclose()
    assert await real_redis.zcard(queue_name) == 1
    assert await dlq.count(real_redis, queue_name) == 1

    ctx = make_ctx(
        redis := CutAfter.from_url(REAL_REDIS_URL), make_deliverer(fake_akto.url, **CONFIG), queue=queue_name
    )
    try:
        with pytest.raises(Retry):
            await jobs.deliver(ctx, [record_json(id="b"), "not a record either"], 0)
    finally:
        await redis.aclose()
    assert (await real_redis.zcard(queue_name), await dlq.count(real_redis, queue_name)) == (1, 1), "none of it"


def test_job_ttl_outlives_retention_by_a_day() -> None:
    state = WorkerState(None, WorkerConfig.load({"retention_seconds": 600}, env={}), QUEUE)  # type: ignore[arg-type]
    assert state.job_ttl_ms == (600 + 86_400) * 1000


async def test_redis_that_never_answers_while_persisting_ends_the_job_with_retry_by_its_deadline(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Redis that accepts connections and never answers: the client would wait for ever.
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    monkeypatch.setattr(jobs, "job_limits", lambda _: JobLimits(delivery_seconds=1, persist_seconds=0.3, job_timeout=3))
    redis = Redis(host="127.0.0.1", port=port)
    fake_akto.configure(status=503)
    ctx = make_ctx(redis, make_deliverer(fake_akto.url, **CONFIG))
    try:
        # arq's own limit on the job: reaching it would be terminal (the job and its records deleted).
        async with asyncio.timeout(3):
            with pytest.raises(Retry) as info:
                await jobs.deliver(ctx, [record_json(id="a")], 0)
    finally:
        await redis.aclose(close_connection_pool=True)
        silent.close()
    assert info.value.defer_score == jobs.RERUN_DEFER_SECONDS * 1000


async def test_a_redis_that_stops_answering_after_the_job_persisted_does_not_hold_the_job_past_its_deadline(
    fake_akto: FakeAkto,
    make_deliverer: MakeDeliverer,
    record_json: Factory,
    fake_redis: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "job_limits", lambda _: JobLimits(delivery_seconds=1, persist_seconds=0.3, job_timeout=3))

    async def never_answers(*args: Any) -> int:
        await asyncio.sleep(3600)
        return 0

    monkeypatch.setattr(fake_redis, "zrem", never_answers)  # the born-index clean-up, after all is stored
    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    async with asyncio.timeout(2):  # arq's timeout (3 s here) would make the job a failure
        result = await jobs.deliver(ctx, [record_json(id="a")], 0)
    assert result == {"delivered": 1, "retried": 0, "dead_lettered": 0}


async def test_an_unexpected_error_delivering_keeps_the_whole_job(
    fake_akto: FakeAkto, make_deliverer: MakeDeliverer, record_json: Factory, fake_redis: Any
) -> None:
    class Broken(Deliverer):
        async def deliver(self, records: list[str], attempt: int, deadline: float | None = None) -> Outcome:
            raise KeyError("a bug")

    ctx = make_ctx(fake_redis, make_deliverer(fake_akto.url, **CONFIG))
    ctx["akto"].deliverer.__class__ = Broken

    with pytest.raises(Retry):
        await jobs.deliver(ctx, [record_json(id="a")], 0)
    assert await fake_redis.zcard(QUEUE) == 0
    assert await dlq.count(fake_redis, QUEUE) == 0


@pytest.mark.parametrize(
    ("delivery_timeout", "delivery_seconds", "job_timeout", "stop_wait"),
    [(10, 30, 45, 45), (2, 10, 25, 25), (30, 90, 105, 45), (0.1, 10, 25, 25), (300, 900, 915, 45)],
)
def test_job_limits_follow_the_delivery_timeout(
    delivery_timeout: float, delivery_seconds: float, job_timeout: int, stop_wait: int
) -> None:
    limits = job_limits(delivery_timeout)
    assert (limits.delivery_seconds, limits.persist_seconds) == (delivery_seconds, 10)
    assert (limits.job_timeout, limits.stop_wait) == (job_timeout, stop_wait)


def test_no_delivery_timeout_puts_arqs_timeout_inside_the_jobs_own_work() -> None:
    for tenths in range(1, 3001, 7):
        limits = job_limits(tenths / 10)
        assert limits.delivery_seconds >= 3 * (tenths / 10)  # room for a chunk, its fallback, and more
        assert limits.job_timeout >= limits.delivery_seconds + limits.persist_seconds + 5


@pytest.mark.parametrize("delivery_timeout", [300.5, 10_000])
def test_a_delivery_timeout_over_300_s_is_refused_naming_the_variable(delivery_timeout: float) -> None:
    with pytest.raises(ConfigError, match=r"AKTO_DELIVERY_TIMEOUT=\S+ is out of range: .* at most 300 seconds"):
        job_limits(delivery_timeout)
