"""The queue contract: job (de)serialisation that never unpickles, the claim script, deferred jobs."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.constants import job_key_prefix

from akto_ingest.queue import (
    DEAD_LETTER_FUNCTION,
    DELIVER_FUNCTION,
    Claimer,
    dead_letter_call,
    decode_job,
    encode_job,
    enqueue_batch,
    frame_problem,
    inbox_key,
    job_frame,
    job_payload,
    push,
)
from akto_ingest.record import now_ms

# The marker file a malicious pickle would create; written only if something unpickles it.
_TOUCH_SOURCE = "open({path!r}, 'w').write('pwned')"


class Exploit:
    """Unpickling this runs ``exec`` that writes a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (_TOUCH_SOURCE.format(path=str(self.path)),))


# -- decode_job ------------------------------------------------------------------------------------


def test_exploit_really_would_write_the_file(tmp_path: Path) -> None:
    # Guard for the test below: the payload is live, so "no file" there means "not unpickled".
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Exploit(marker)))
    assert marker.read_text() == "pwned"


def test_decode_job_never_unpickles(tmp_path: Path) -> None:
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        marker = tmp_path / f"pwned-{protocol}"
        raw = pickle.dumps(Exploit(marker), protocol=protocol)
        job = decode_job(raw)
        assert not marker.exists(), f"protocol {protocol} payload was executed"
        assert job["f"] == DEAD_LETTER_FUNCTION
        assert job["a"][0] == base64.b64encode(raw).decode()
        assert base64.b64decode(job["a"][0]) == raw
        assert "not JSON" in job["a"][1]
        assert job["k"] == {}
        assert job["t"] == 1
        assert isinstance(job["et"], int)


def test_decode_job_of_an_arq_pickled_job_is_a_dead_letter_call() -> None:
    # What arq's default serializer would have written for a job of ours.
    raw = pickle.dumps({"t": 1, "f": "deliver", "a": [["{}"], 0], "k": {}, "et": 1})
    job = decode_job(raw)
    assert job["f"] == DEAD_LETTER_FUNCTION
    assert base64.b64decode(job["a"][0]) == raw


def test_decode_job_json_that_is_not_our_job_is_a_dead_letter_call() -> None:
    cases = [
        b"[1, 2, 3]",
        b'"deliver"',
        b'{"f": "os.system", "a": ["rm -rf /"]}',
        b'{"f": "deliver", "a": "not a list"}',
        b'{"a": [[], 0]}',
    ]
    for raw in cases:
        job = decode_job(raw)
        assert job["f"] == DEAD_LETTER_FUNCTION, raw
        assert job["a"][0] == base64.b64encode(raw).decode()
        assert job["a"][1].endswith("; it was not executed"), job["a"][1]


RECORDS = ['{"v":1,"id":"a"}', '{"v":1,"id":"b"}']


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        ({"f": "deliver", "a": [RECORDS]}, "deliver takes (records: list of text, attempt: integer >= 0)"),
        ({"f": "deliver", "a": [RECORDS, 0], "k": {"priority": 1}}, "no keyword arguments; this job has priority"),
        ({"f": "deliver", "a": [RECORDS, 0, "extra"]}, "this job has 3 argument(s) (list, int, str)"),
        ({"f": "deliver", "a": [RECORDS, "0"]}, "deliver takes"),
        ({"f": "deliver", "a": [RECORDS, -1]}, "deliver takes"),
        ({"f": "deliver", "a": [RECORDS, True]}, "deliver takes"),
        ({"f": "deliver", "a": [[{"id": "a"}], 0]}, "deliver takes"),
        ({"f": "deliver", "a": [RECORDS, 0], "k": []}, "deliver job has no argument list"),
        ({"f": "deliver", "a": [RECORDS, 0], "t": "1"}, "try count or enqueue time is not a number"),
        ({"f": "deliver", "a": [RECORDS, 0], "et": None}, "try count or enqueue time is not a number"),
        ({"f": "dead_letter_job", "a": ["not base64 !", "why"]}, "dead_letter_job takes (raw job: base64 text"),
        ({"f": "dead_letter_job", "a": ["aGk="]}, "dead_letter_job takes"),
        ({"f": "dead_letter_job", "a": ["aGk=", "why"], "k": {"x": 1}}, "takes no keyword arguments"),
    ],
)
def test_a_job_this_worker_cannot_run_as_it_is_becomes_a_dead_letter_call(frame: dict[str, Any], named: str) -> None:
    # As during a rolling deploy of two versions: arq would call the function with these arguments,
    # it would raise TypeError, and arq would delete the job and every record in it.
    raw = orjson.dumps(frame)
    job = decode_job(raw)
    assert job["f"] == DEAD_LETTER_FUNCTION
    assert job["a"][0] == base64.b64encode(raw).decode()
    assert named in job["a"][1]
    assert frame_problem(job) == "", "the dead-letter call itself always has a frame this worker runs"


def test_a_dead_letter_call_of_ours_passes_through() -> None:
    job = dead_letter_call(b"\x80anything", "why")
    assert decode_job(orjson.dumps(job)) == job


def test_decode_job_of_invalid_utf8_is_a_dead_letter_call() -> None:
    raw = b"\xff\xfe\x00garbage"
    job = decode_job(raw)
    assert job["f"] == DEAD_LETTER_FUNCTION
    assert base64.b64decode(job["a"][0]) == raw


def test_our_jobs_pass_through_unchanged() -> None:
    raw = job_payload(['{"id":"a"}', '{"id":"b"}'], 3, 1_700_000_000_000)
    assert decode_job(raw) == {
        "t": 1,
        "f": DELIVER_FUNCTION,
        "a": [['{"id":"a"}', '{"id":"b"}'], 3],
        "k": {},
        "et": 1_700_000_000_000,
    }
    dead = encode_job({"f": DEAD_LETTER_FUNCTION, "a": ["eHg=", "why"], "k": {}, "t": 2, "et": 5})
    assert decode_job(dead) == {"f": DEAD_LETTER_FUNCTION, "a": ["eHg=", "why"], "k": {}, "t": 2, "et": 5}


def test_decode_job_fills_missing_optional_fields() -> None:
    before = now_ms()
    job = decode_job(b'{"f": "deliver", "a": [["r"], 0]}')
    assert job["k"] == {}
    assert job["t"] == 1
    assert before <= job["et"] <= now_ms()


def test_job_payload_shape_and_encode_job_is_json() -> None:
    payload = job_payload(["r1", "r2"], 0, 123)
    assert json.loads(payload) == {"t": 1, "f": "deliver", "a": [["r1", "r2"], 0], "k": {}, "et": 123}
    assert json.loads(encode_job({"x": [1]})) == {"x": [1]}


# -- Claimer (real Redis: it is a Lua script) ------------------------------------------------------


def _records(n: int) -> list[str]:
    # Quotes, slashes, backslashes and non-ASCII text check the Lua side's JSON encoding.
    return [
        json.dumps({"id": f"call-{i}", "mode": "block", "request_body": {"p": f'a/"b"\\c é {i}'}}) for i in range(n)
    ]


async def _jobs(redis: Any, queue: str) -> list[tuple[str, float, dict[str, Any]]]:
    out = []
    for job_id, score in await redis.zrange(queue, 0, -1, withscores=True):
        key = job_key_prefix + job_id.decode()
        raw = await redis.get(key)
        assert raw is not None, f"job {key} is in the queue but has no payload"
        out.append((job_id.decode(), score, decode_job(raw)))
    return out


async def test_claim_moves_one_batch_into_one_job_in_order(real_redis: Any, queue_name: str) -> None:
    records = _records(7)
    for record in records:
        await push(real_redis, queue_name, [record])
    claimer = Claimer(real_redis, queue_name, batch_size=5, job_ttl_ms=60_000)
    before = now_ms()

    assert await claimer.claim() == 5

    jobs = await _jobs(real_redis, queue_name)
    assert len(jobs) == 1
    job_id, score, job = jobs[0]
    assert job["f"] == DELIVER_FUNCTION
    assert job["a"] == [records[:5], 0]
    assert job["k"] == {}
    assert before <= job["et"] <= now_ms()
    assert score == job["et"]
    ttl = await real_redis.pttl(job_key_prefix + job_id)
    assert 0 < ttl <= 60_000
    remaining = await real_redis.lrange(inbox_key(queue_name), 0, -1)
    assert [r.decode() for r in remaining] == records[5:]


async def test_an_inbox_entry_that_is_not_utf8_does_not_take_its_batch_with_it(
    real_redis: Any, queue_name: str
) -> None:
    good = _records(2)
    await real_redis.rpush(inbox_key(queue_name), good[0], b'{"id":"bad\xff","mode":"block"}', good[1])
    claimer = Claimer(real_redis, queue_name, batch_size=5, job_ttl_ms=60_000)

    assert await claimer.claim() == 3

    [(_, _, job)] = await _jobs(real_redis, queue_name)
    assert job["f"] == DELIVER_FUNCTION
    records = job["a"][0]
    assert (records[0], records[2]) == (good[0], good[1])
    assert records[1] == '{"id":"bad\ufffd","mode":"block"}'


async def test_claim_takes_the_rest_then_reports_empty(real_redis: Any, queue_name: str) -> None:
    records = _records(3)
    for record in records:
        await push(real_redis, queue_name, [record])
    claimer = Claimer(real_redis, queue_name, batch_size=2, job_ttl_ms=60_000)

    assert await claimer.claim() == 2
    assert await claimer.claim() == 1
    assert await claimer.claim() == 0
    assert await claimer.claim() == 0

    jobs = await _jobs(real_redis, queue_name)
    assert sorted(len(job["a"][0]) for _, _, job in jobs) == [1, 2]
    claimed = [r for _, _, job in sorted(jobs, key=lambda j: -len(j[2]["a"][0])) for r in job["a"][0]]
    assert claimed == records
    assert await real_redis.llen(inbox_key(queue_name)) == 0


async def test_claim_on_empty_inbox_creates_no_job(real_redis: Any, queue_name: str) -> None:
    claimer = Claimer(real_redis, queue_name, batch_size=10, job_ttl_ms=60_000)
    assert await claimer.claim() == 0
    assert await real_redis.zcard(queue_name) == 0
    assert await real_redis.exists(inbox_key(queue_name)) == 0


async def test_claimed_single_record_is_still_a_list(real_redis: Any, queue_name: str) -> None:
    await push(real_redis, queue_name, ['{"id":"only"}'])
    assert await Claimer(real_redis, queue_name, batch_size=100, job_ttl_ms=1_000).claim() == 1
    [(_, _, job)] = await _jobs(real_redis, queue_name)
    assert job["a"] == [['{"id":"only"}'], 0]


# -- enqueue_batch ---------------------------------------------------------------------------------


async def test_enqueue_batch_defers_by_score(fake_redis: Any) -> None:
    before = now_ms()
    job_id = await enqueue_batch(fake_redis, "akto:q", ["r1", "r2"], attempt=4, defer_ms=30_000, ttl_ms=60_000)
    after = now_ms()

    score = await fake_redis.zscore("akto:q", job_id)
    assert before + 30_000 <= score <= after + 30_000
    job = decode_job(await fake_redis.get(job_key_prefix + job_id))
    assert job["f"] == DELIVER_FUNCTION
    assert job["a"] == [["r1", "r2"], 4]
    assert before <= job["et"] <= after


async def test_enqueue_batch_job_key_outlives_its_wait(real_redis: Any, queue_name: str) -> None:
    # Real Redis: fakeredis's expiry clock lags by the time since it started.
    job_id = await enqueue_batch(real_redis, queue_name, ["r"], attempt=1, defer_ms=30_000, ttl_ms=60_000)
    ttl = await real_redis.pttl(job_key_prefix + job_id)
    assert 89_000 < ttl <= 90_000  # ttl + defer
    assert await real_redis.zcard(queue_name) == 1


async def test_enqueue_batch_creates_distinct_jobs(fake_redis: Any) -> None:
    a = await enqueue_batch(fake_redis, "akto:q", ["r"], attempt=1, defer_ms=0, ttl_ms=1_000)
    b = await enqueue_batch(fake_redis, "akto:q", ["r"], attempt=1, defer_ms=5_000, ttl_ms=1_000)
    assert a != b
    assert [j.decode() for j in await fake_redis.zrange("akto:q", 0, -1)] == [a, b]


async def test_push_appends_to_the_inbox(fake_redis: Any) -> None:
    await push(fake_redis, "akto:q", ["first"])
    await push(fake_redis, "akto:q", ["second"])
    assert await fake_redis.lrange("akto:q:inbox", 0, -1) == [b"first", b"second"]


async def test_claimed_job_is_the_job_payload_of_its_records(real_redis: Any, queue_name: str) -> None:
    # The claim script and job_payload() share job_frame(): a claimed job and a retry job of the
    # same records differ only in their attempt and time.
    records = ['{"id":"a","path":"/v1/chat","text":"é \\" \\\\"}', '{"id":"b"}']
    await push(real_redis, queue_name, records)
    assert await Claimer(real_redis, queue_name, batch_size=10, job_ttl_ms=60_000).claim() == 2

    [(job_id, score, _)] = await _jobs(real_redis, queue_name)
    raw = await real_redis.get(job_key_prefix + job_id)
    assert json.loads(raw) == json.loads(job_payload(records, 0, int(score)))
    assert decode_job(raw) == decode_job(job_payload(records, 0, int(score)))


def test_job_frame_wraps_any_records_list() -> None:
    before, after = job_frame(2, 99)
    assert json.loads(before + b'["x","y"]' + after) == {
        "t": 1,
        "f": DELIVER_FUNCTION,
        "a": [["x", "y"], 2],
        "k": {},
        "et": 99,
    }
