"""The queue contract between the hook and the worker: Redis keys, the record push, and the job format.

The hook does one ``RPUSH`` per record onto ``<queue>:inbox``. A worker moves records from the inbox
into arq jobs of up to ``batch_size`` records with one atomic Lua script, so a record is always in
exactly one place Redis persists: the inbox, a job, or the dead-letter store. Batching is what lets
one worker process deliver thousands of records a second: arq spends about four round trips to
claim a job, and that cost is now paid per batch, while retries and dead letters stay per record.

Jobs are JSON. :func:`decode_job` never unpickles: anything that is not one of our JSON jobs is
turned into a ``dead_letter_job`` call so the raw bytes land in the dead-letter store.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .record import now_ms

DELIVER_FUNCTION = "deliver"
DEAD_LETTER_FUNCTION = "dead_letter_job"
JOB_FUNCTIONS = frozenset({DELIVER_FUNCTION, DEAD_LETTER_FUNCTION})


def inbox_key(queue: str) -> str:
    return f"{queue}:inbox"


def dlq_key(queue: str) -> str:
    return f"{queue}:dlq"


def dlq_index_key(queue: str) -> str:
    return f"{queue}:dlq:index"


def violations_key(queue: str) -> str:
    """Capped stream of the requests Akto blocked or flagged (``violations.py``)."""
    return f"{queue}:violations"


def heartbeat_key(queue: str) -> str:
    """Hash of worker (host:pid) -> last beat in epoch ms (entries pruned by :func:`report`)."""
    return f"{queue}:workers"


def born_key(queue: str) -> str:
    """Sorted set of job id -> the capture time (epoch ms) of the oldest record the job holds.

    A job's score in arq's queue is when it runs next, which for a retry is in the future: it says
    nothing about how long its records have waited. This index is what ``akto-ingest status`` reads
    for the oldest record's age. Written with each job, removed when the job is done."""
    return f"{queue}:born"


def spool_status_key(queue: str) -> str:
    """Hash of proxy process (host:pid) -> its spool figures as JSON, with ``updated_ms`` (entries
    pruned by :func:`report`)."""
    return f"{queue}:spool"


# How long a process that stopped reporting stays listed (marked stale by ``akto-ingest status``
# after a minute): long enough for an operator to see that it went, short enough that restarts (a
# new host:pid each) do not grow the hash for ever.
REPORT_KEEP_MS = 3_600_000

# KEYS: the hash. ARGV: field, value, oldest time kept (ms), ttl ms. A value is a time in ms, or JSON
# with ``updated_ms``; an entry with neither is not ours and is dropped as well.
_REPORT_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local oldest = tonumber(ARGV[3])
for i = 1, #all, 2 do
  local seen = tonumber(all[i + 1]) or tonumber(string.match(all[i + 1], '"updated_ms":%s*(%d+)'))
  if seen == nil or seen < oldest then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


async def report(redis: Redis, key: str, owner: str, value: str, now: int | None = None) -> None:
    """Write one process's entry in a per-process hash (:func:`heartbeat_key`, :func:`spool_status_key`),
    dropping entries not written for :data:`REPORT_KEEP_MS`; the hash itself expires that long after
    its last write."""
    now = now_ms() if now is None else now
    await redis.eval(_REPORT_LUA, 1, key, owner, value, str(now - REPORT_KEEP_MS), str(REPORT_KEEP_MS))  # type: ignore[misc]  # redis-py types sync|async


async def push(redis: Redis, queue: str, records_json: list[str]) -> None:
    """The hook's only Redis write: one RPUSH, one round trip, for one record or a group of them."""
    await redis.rpush(inbox_key(queue), *records_json)  # type: ignore[misc]  # redis-py types sync|async


# KEYS: inbox, arq queue, born index. ARGV: batch size, job id, now ms, job ttl ms, job key prefix, and the job
# JSON before and after its records list (from job_frame(), so the script and job_payload() build
# the same job). Records already are JSON strings, so the script only encodes them as a list.
# The worker's client sends a command again when its connection drops before the reply, job id and
# all: if the script had run, its job exists, and claiming again would write the next batch over it.
_CLAIM_LUA = """
if redis.call('EXISTS', ARGV[5] .. ARGV[2]) == 1 then return 0 end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('PSETEX', ARGV[5] .. ARGV[2], ARGV[4], ARGV[6] .. cjson.encode(items) .. ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
-- The job's born score: its oldest record's capture time (the first match, see _CREATED_MS).
local born = tonumber(ARGV[3])
for _, item in ipairs(items) do
  local created = tonumber(string.match(item, '"created_ms":(%d+)'))
  if created and created < born then born = created end
end
redis.call('ZADD', KEYS[3], born, ARGV[2])
return #items
"""
# The same match in Python, for jobs made outside the script. Records are compact JSON with
# ``created_ms`` fourth, after ``v``, ``id`` and ``mode``: its first match is the record's own, never
# a key of the request or response bodies further on. At most 15 digits (epoch ms until the year
# 33658): an entry with more is not a record this hook wrote, and int() refuses past 4,300 digits.
_CREATED_MS = re.compile(r'"created_ms":(\d{1,15})(?!\d)')
MIN_CREATED_MS = 0
MAX_CREATED_MS = 10**15 - 1


def oldest_created_ms(records: list[str], default: int) -> int:
    """The capture time of the oldest of ``records`` (JSON lines), or ``default`` when none says."""
    found = (int(m.group(1)) for line in records if (m := _CREATED_MS.search(line)))
    return min(found, default=default)


_RECORDS_PLACEHOLDER = "\x00records\x00"


def job_frame(attempt: int, enqueue_ms: int) -> tuple[bytes, bytes]:
    """The ``deliver`` job's JSON before and after its list of records: the one place its shape is set."""
    template = orjson.dumps(
        {"t": 1, "f": DELIVER_FUNCTION, "a": [_RECORDS_PLACEHOLDER, attempt], "k": {}, "et": enqueue_ms}
    )
    before, _, after = template.partition(orjson.dumps(_RECORDS_PLACEHOLDER))
    return before, after


def job_payload(records: list[str], attempt: int, enqueue_ms: int) -> bytes:
    """The JSON job arq stores for a batch of records."""
    before, after = job_frame(attempt, enqueue_ms)
    return before + orjson.dumps(records) + after


class Claimer:
    """Moves records from the inbox into arq jobs, atomically, in batches."""

    def __init__(self, redis: Redis, queue: str, batch_size: int, job_ttl_ms: int) -> None:
        self._redis = redis
        self._queue = queue
        self._batch_size = batch_size
        self._job_ttl_ms = job_ttl_ms
        self._script = redis.register_script(_CLAIM_LUA)

    async def claim(self) -> int:
        """Turn up to ``batch_size`` inbox records into one job; returns how many moved."""
        now = now_ms()
        before, after = job_frame(0, now)
        moved = await self._script(
            keys=[inbox_key(self._queue), self._queue, born_key(self._queue)],
            args=[self._batch_size, new_job_id(), now, self._job_ttl_ms, job_key_prefix, before, after],
        )
        return int(moved)


def new_job_id() -> str:
    return uuid.uuid4().hex


async def enqueue_batch(
    redis: Redis, queue: str, records: list[str], *, attempt: int, defer_ms: int, ttl_ms: int
) -> str:
    """Queue records as one job that runs ``defer_ms`` from now (used for retries and replays)."""
    async with redis.pipeline(transaction=True) as pipe:
        job_id = add_batch(pipe, queue, records, attempt=attempt, defer_ms=defer_ms, ttl_ms=ttl_ms)
        await pipe.execute()
    return job_id


def add_batch(pipe: Pipeline, queue: str, records: list[str], *, attempt: int, defer_ms: int, ttl_ms: int) -> str:
    """Add :func:`enqueue_batch`'s writes to a transaction the caller executes; returns the job id."""
    job_id = new_job_id()
    now = now_ms()
    pipe.psetex(job_key_prefix + job_id, ttl_ms + defer_ms, job_payload(records, attempt, now))
    pipe.zadd(queue, {job_id: now + defer_ms})
    pipe.zadd(born_key(queue), {job_id: oldest_created_ms(records, now)})
    return job_id


async def job_done(redis: Redis, queue: str, job_id: str) -> None:
    """Take a finished job out of the born index (its records are delivered, dead-lettered or in a
    new job). Should this write fail, ``akto-ingest status`` skips the entry once the job is gone."""
    await redis.zrem(born_key(queue), job_id)


async def oldest_job_born_ms(redis: Redis, queue: str, look: int = 100) -> int | None:
    """The capture time of the oldest record held by a job still in ``queue`` (None: no job).
    Entries of jobs that have left the queue are removed on the way."""
    entries = await redis.zrange(born_key(queue), 0, look - 1, withscores=True)
    if not entries:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, _ in entries:
            pipe.zscore(queue, job_id)
        live = await pipe.execute()
    oldest = None
    stale = []
    for (job_id, born), score in zip(entries, live, strict=True):
        if score is None:
            stale.append(job_id)
        elif oldest is None:
            oldest = int(born)
    if stale:
        # Jobs that ended without clearing their entry: dropped, so they cannot crowd out live ones.
        await redis.zrem(born_key(queue), *stale)
    return oldest


@dataclass(frozen=True)
class Backlog:
    """What waits, each job counted once: jobs due now and not running, jobs a worker runs now, jobs
    deferred to later (retries), and records not yet claimed."""

    ready_jobs: int
    deferred_jobs: int
    inbox: int
    running_jobs: int = 0


# How many of the jobs due now are checked for arq's in-progress key. arq takes due jobs lowest score
# first, so the running ones lead the range; a few hundred covers every job all workers can run at
# once (max_jobs each) while keeping the script short.
RUNNING_LOOK = 1000

# KEYS: arq queue, inbox. ARGV: now ms, arq's in-progress key prefix, how many due jobs to look at.
# A running job stays in arq's queue, due, until it ends: counted as running, not also as ready.
_BACKLOG_LUA = """
local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local running = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  running = running + redis.call('EXISTS', ARGV[2] .. id)
end
return {due - running, redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf'), redis.call('LLEN', KEYS[2]), running}
"""


async def backlog(redis: Redis, queue: str, now: int | None = None) -> Backlog:
    """The backlog counts the worker's gauges and ``akto-ingest status`` both report, in one script."""
    now = now_ms() if now is None else now
    ready, deferred, inbox, running = await redis.eval(  # type: ignore[misc]  # redis-py types sync|async
        _BACKLOG_LUA, 2, queue, inbox_key(queue), str(now), in_progress_key_prefix, str(RUNNING_LOOK)
    )
    return Backlog(int(ready), int(deferred), int(inbox), int(running))


def encode_job(job: dict[str, Any]) -> bytes:
    """arq's job serializer: JSON, never pickle."""
    return orjson.dumps(job)


def decode_job(raw: bytes) -> dict[str, Any]:
    """arq's job deserializer. Never raises: a job this worker cannot run as it is (not JSON, not one
    of our functions, or not the arguments this version takes, as during a rolling deploy of two
    versions) becomes a ``dead_letter_job`` call, so its raw bytes land in the dead-letter store."""
    try:
        try:
            job = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # The claim script copies inbox entries into the job byte for byte: one entry that is
            # not UTF-8 would make its whole batch one undecodable dead letter. Its bad bytes become
            # U+FFFD (as the spool's replay does), and every other record of the batch goes on.
            job = orjson.loads(raw.decode(errors="replace"))
    except orjson.JSONDecodeError:
        return dead_letter_call(raw, "job is not JSON (a pickled or corrupt payload); it was not executed")
    problem = frame_problem(job)
    if problem or not isinstance(job, dict):
        return dead_letter_call(raw, f"{problem}; it was not executed")
    job.setdefault("k", {})
    job.setdefault("t", 1)
    job.setdefault("et", now_ms())
    return job


def dead_letter_call(raw: bytes, reason: str) -> dict[str, Any]:
    """The job that stores ``raw`` as a dead letter instead of running it."""
    return {"f": DEAD_LETTER_FUNCTION, "a": [base64.b64encode(raw).decode(), reason], "k": {}, "t": 1, "et": now_ms()}


def frame_problem(job: Any) -> str:
    """Why ``job`` (decoded JSON) is not a call this worker can run as it is; ``""`` when it is."""
    if not isinstance(job, dict) or job.get("f") not in JOB_FUNCTIONS:
        return "job is JSON but not an Akto ingest job"
    name = job["f"]
    args, kwargs = job.get("a"), job.get("k", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return f"{name} job has no argument list"
    if kwargs:
        return f"{name} takes no keyword arguments; this job has {', '.join(sorted(map(str, kwargs))[:10])}"
    if not _whole(job.get("t", 0)) or not isinstance(job.get("et", 0), int | float) or isinstance(job.get("et"), bool):
        return f"{name} job's try count or enqueue time is not a number"
    if name == DELIVER_FUNCTION:
        if not (
            len(args) == 2
            and isinstance(args[0], list)
            and all(isinstance(r, str) for r in args[0])
            and _whole(args[1])
        ):
            return f"deliver takes (records: list of text, attempt: integer >= 0); this job has {_shape(args)}"
        return ""
    if not (len(args) == 2 and all(isinstance(a, str) for a in args) and _base64(args[0])):
        return f"dead_letter_job takes (raw job: base64 text, reason: text); this job has {_shape(args)}"
    return ""


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def _shape(args: list[Any]) -> str:
    kinds = ", ".join(type(a).__name__ for a in args[:5]) + (", ..." if len(args) > 5 else "")
    return f"{len(args)} argument(s) ({kinds})"


def job_records(raw: bytes) -> list[str] | None:
    """The records of a ``deliver`` job this worker could not run (its frame is wrong), so each can be
    kept on its own; None when ``raw`` holds no list of records."""
    try:
        job = orjson.loads(raw.decode(errors="replace"))
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(job, dict) and job.get("f") == DELIVER_FUNCTION):
        return None
    args, kwargs = job.get("a"), job.get("k")
    found = args[0] if isinstance(args, list) and args else kwargs.get("records") if isinstance(kwargs, dict) else None
    if isinstance(found, list) and found and all(isinstance(r, str) for r in found):
        return found
    return None
