"""Poison from outside: what anyone can put on the documented inbox or the arq queue costs only itself.

A real worker process, a real Redis and the fake Akto process. Entries are pushed as an outside
writer would push them (``RPUSH <queue>:inbox``, or a job written into arq's queue), and every
record must end at Akto or in the dead-letter store, raw bytes kept.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from arq.constants import job_key_prefix
from redis import Redis

from akto_ingest import cli
from akto_ingest.queue import dlq_key, inbox_key
from akto_ingest.record import Record, now_ms
from tests.stack import FAST_RETRY, AktoAdmin, Proc, new_redis, start_fake_akto, start_worker, wait_until, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SETTLE_SECONDS = 30


@dataclass
class Poison:
    akto: AktoAdmin
    redis: Redis
    queue: str
    worker: Proc
    redis_url: str


@pytest.fixture(scope="module")
def poison(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Poison]:
    log_dir = tmp_path_factory.mktemp("poison")
    akto_proc, akto = start_fake_akto(log_dir)
    server = new_redis(log_dir)
    queue = f"akto:poison:{uuid.uuid4().hex[:8]}"
    worker = start_worker("poison-worker", worker_env(akto.url, server.url, queue, **FAST_RETRY), log_dir)
    redis = Redis.from_url(server.url)
    try:
        yield Poison(akto, redis, queue, worker, server.url)
    finally:
        redis.close()
        worker.stop(timeout=30)
        akto_proc.stop()
        server.stop()


def records(count: int, tag: str, **fields: Any) -> list[str]:
    return [Record(id=f"{tag}-{i}-{uuid.uuid4().hex[:6]}", mode="monitor", **fields).to_json() for i in range(count)]


def letters(poison: Poison) -> dict[str, dict[str, Any]]:
    entries: dict[bytes, bytes] = poison.redis.hgetall(dlq_key(poison.queue))  # type: ignore[assignment]  # redis-py types sync|async
    return {k.decode(): orjson.loads(v) for k, v in entries.items()}


def settled(poison: Poison, delivered: list[str], dead: int) -> tuple[set[str], dict[str, dict[str, Any]]]:
    ids = {Record.from_json(line).id for line in delivered}

    def done() -> bool:
        at_akto = ids & set(poison.akto.message_id_counts())
        return at_akto == ids and len(letters(poison)) >= dead

    with contextlib.suppress(TimeoutError):
        wait_until(done, SETTLE_SECONDS, interval=0.5, what="every record at Akto or dead-lettered")
    return ids & set(poison.akto.message_id_counts()), letters(poison)


def test_entries_no_parser_takes_are_dead_lettered_raw_and_the_rest_delivered(poison: Poison) -> None:
    # The review's repro: 20 records, two entries 3,000 levels deep, 20 more records, all on the inbox.
    deep = "[" * 3000 + "]" * 3000
    poisoned = [
        f'{{"v":1,"id":"deep-1","mode":"monitor","created_ms":{now_ms()},"request_body":{{"x":{deep}}}}}',
        deep,
    ]
    before, after = records(20, "before"), records(20, "after")
    poison.redis.rpush(inbox_key(poison.queue), *before, *poisoned, *after)

    delivered, dead = settled(poison, before + after, 2)

    assert len(delivered) == 40, f"{len(delivered)} of 40 delivered"
    kept = {letter["record"]: letter for letter in dead.values()}
    assert set(kept) == set(poisoned), "each poison entry is kept, byte for byte"
    assert {letter["reason"] for letter in kept.values()} == {"invalid_record"}
    assert "deep-1" in dead
    poison.redis.delete(dlq_key(poison.queue), dlq_key(poison.queue) + ":index")


def test_records_past_every_parser_limit_that_the_hook_wrote_reach_akto(poison: Poison) -> None:
    # Tool schemas nested 150, 250 and 400 levels and integers orjson cannot write: refused for good
    # by the worker before (invalid_record), or never queued by the hook.
    built = []
    for levels in (150, 250, 400):
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(levels // 2):
            schema = {"type": "object", "properties": {"p": schema}}
        body = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"function": {"parameters": schema}}]}
        built += records(1, f"tools-{levels}", request_body={**body, "seed": 2**64})

    poison.redis.rpush(inbox_key(poison.queue), *built)
    delivered, dead = settled(poison, built, 0)

    assert len(delivered) == 3, f"{len(delivered)} of 3 delivered; dead letters: {list(dead)}"
    assert dead == {}


def queue_job(poison: Poison, frame: dict[str, Any]) -> None:
    job_id = uuid.uuid4().hex
    poison.redis.psetex(job_key_prefix + job_id, 600_000, orjson.dumps(frame))
    poison.redis.zadd(poison.queue, {job_id: now_ms()})


def test_jobs_this_worker_cannot_run_are_dead_letters_not_deletions(poison: Poison) -> None:
    # As during a rolling deploy of two versions: deliver without its attempt, deliver with a keyword
    # this version does not take, and a dead-letter job whose payload is not base64.
    missing, extra = records(2, "missing-attempt"), records(2, "extra-keyword")
    queue_job(poison, {"t": 1, "f": "deliver", "a": [missing], "k": {}, "et": now_ms()})
    queue_job(poison, {"t": 1, "f": "deliver", "a": [extra, 0], "k": {"priority": 1}, "et": now_ms()})
    queue_job(poison, {"t": 1, "f": "dead_letter_job", "a": ["%%% not base64", "why"], "k": {}, "et": now_ms()})

    _, dead = settled(poison, [], 5)

    by_reason = sorted((letter["reason"], letter["record"]) for letter in dead.values())
    assert [r for r, _ in by_reason] == ["undecodable_job"] + ["unrunnable_job"] * 4, by_reason
    assert {record for reason, record in by_reason if reason == "unrunnable_job"} == set(missing + extra)
    [bad] = [record for reason, record in by_reason if reason == "undecodable_job"]
    assert orjson.loads(bad)["a"][0] == "%%% not base64", "the job is kept as it was written"

    # The operator's replay puts the records back as records, which this version delivers.
    assert cli.main(["--redis-url", poison.redis_url, "--queue", poison.queue, "dlq", "replay", "--all"]) == 0
    delivered, _ = settled(poison, missing + extra, 0)
    assert len(delivered) == 4
