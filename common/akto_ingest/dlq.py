"""The dead-letter store: records Akto refused or that ran out of time, kept in Redis until an operator acts.

Entries live in a hash (id -> entry JSON) with a sorted-set index by failure time. Neither has a TTL:
a dead letter stays until it is replayed or purged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .queue import dlq_index_key, dlq_key, inbox_key
from .record import now_ms


class DeadLetter(BaseModel):
    """One record the worker gave up on, with why and when."""

    id: str
    record: str
    reason: str
    detail: str = ""
    attempts: int = 0
    created_ms: int | None = None
    failed_ms: int
    last_status: int | None = None


def dead_letter_id(record_id: str | None, raw: str) -> str:
    """The record's own id when it has one, so a record dead-lettered twice is kept once."""
    return record_id or "raw-" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def make(
    raw: str,
    *,
    record_id: str | None,
    reason: str,
    detail: str = "",
    attempts: int = 0,
    created_ms: int | None = None,
    last_status: int | None = None,
) -> DeadLetter:
    return DeadLetter(
        id=dead_letter_id(record_id, raw),
        record=raw,
        reason=reason,
        detail=detail[:1000],
        attempts=attempts,
        created_ms=created_ms,
        failed_ms=now_ms(),
        last_status=last_status,
    )


# KEYS: dead-letter hash, its index. ARGV: six per letter: its id, the id it takes when a different
# record already holds that one, its entry under each of the two, its record, its failure time.
# A call id is not unique to one record (a client may send x-litellm-call-id, an SDK caller may
# pass litellm_call_id), so only the same record dead-lettered again may replace an entry.
_PUT_LUA = """
for i = 1, #ARGV, 6 do
  local id, entry = ARGV[i], ARGV[i + 2]
  local held = redis.call('HGET', KEYS[1], id)
  if held then
    local read, letter = pcall(cjson.decode, held)
    if not (read and type(letter) == 'table' and letter['record'] == ARGV[i + 4]) then
      id, entry = ARGV[i + 1], ARGV[i + 3]
    end
  end
  redis.call('HSET', KEYS[1], id, entry)
  redis.call('ZADD', KEYS[2], ARGV[i + 5], id)
end
return #ARGV / 6
"""


def _other_record_id(letter: DeadLetter) -> str:
    """The id a letter takes when a different record holds its own: stable for the same record."""
    return f"{letter.id}~{hashlib.sha256(letter.record.encode()).hexdigest()[:16]}"


async def put(redis: Redis, queue: str, letters: Iterable[DeadLetter]) -> int:
    async with redis.pipeline(transaction=True) as pipe:
        stored = await put_in(pipe, queue, letters)
        await pipe.execute()
    return stored


async def put_in(pipe: Pipeline, queue: str, letters: Iterable[DeadLetter]) -> int:
    """Add :func:`put`'s write to a transaction the caller executes; returns how many letters."""
    letters = list(letters)
    if not letters:
        return 0
    args: list[str | int] = []
    for letter in letters:
        other = _other_record_id(letter)
        args += [
            letter.id,
            other,
            letter.model_dump_json(),
            letter.model_copy(update={"id": other}).model_dump_json(),
            letter.record,
            letter.failed_ms,
        ]
    await pipe.register_script(_PUT_LUA)(keys=[dlq_key(queue), dlq_index_key(queue)], args=args, client=pipe)
    return len(letters)


async def count(redis: Redis, queue: str) -> int:
    return int(await redis.hlen(dlq_key(queue)))  # type: ignore[misc]  # redis-py types sync|async


async def list_ids(redis: Redis, queue: str, *, limit: int = 50, offset: int = 0) -> list[str]:
    """Dead-letter ids, oldest failure first."""
    ids = await redis.zrange(dlq_index_key(queue), offset, offset + limit - 1)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def get_many(redis: Redis, queue: str, ids: list[str]) -> list[DeadLetter]:
    if not ids:
        return []
    raws = await redis.hmget(dlq_key(queue), ids)  # type: ignore[misc]  # redis-py types sync|async
    return [DeadLetter.model_validate_json(r) for r in raws if r is not None]


# Ids per replay script or purge transaction. Redis runs a script alone, so one call over a large
# store would stall every proxy's record writes behind it; 500 entries take a few milliseconds.
CHUNK = 500

# KEYS: dead-letter hash, its index, the inbox. ARGV: ids. Reading and moving in one script means
# two operators replaying at once cannot queue a record twice. An id left in the index without an
# entry is dropped from the index too, so a replay of the whole store always makes progress.
# A record (a JSON object) goes back with ``replayed_ms``, Redis's clock now, appended as its last key
# (a reader takes the last of a repeated key): its retention counts from there, so a record replayed
# after a long outage gets a fresh retry budget. Anything else goes back byte for byte.
_REPLAY_LUA = """
local time = redis.call('TIME')
local now = string.format('%.0f', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
local moved = 0
for _, id in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[1], id)
  if entry then
    local record = cjson.decode(entry)['record']
    local head = string.match(record, '^(%s*{.*[^%s{])%s*}%s*$')
    if head then record = head .. ',"replayed_ms":' .. now .. '}' end
    redis.call('RPUSH', KEYS[3], record)
    redis.call('HDEL', KEYS[1], id)
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[2], id)
end
return moved
"""


async def replay(redis: Redis, queue: str, ids: list[str]) -> int:
    """Put records back on the inbox and drop their dead-letter entries. A record is unchanged but for
    its ``replayed_ms`` (see ``_REPLAY_LUA``).

    Each record moves atomically; ids go to Redis in chunks of :data:`CHUNK`.
    """
    moved = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        moved += int(await redis.eval(_REPLAY_LUA, 3, dlq_key(queue), dlq_index_key(queue), inbox_key(queue), *chunk))  # type: ignore[misc]  # redis-py types sync|async
    return moved


async def replay_all(redis: Redis, queue: str) -> int:
    """Replay every dead letter that failed before this call, each once, one chunk at a time.

    Records that fail again while the replay runs are dead-lettered anew and wait for the next
    replay, even when Akto keeps refusing them.
    """
    return await replay(redis, queue, await _ids_before_now(redis, queue))


async def purge_all(redis: Redis, queue: str) -> int:
    """Purge every dead letter that failed before this call, one chunk at a time."""
    return await purge(redis, queue, await _ids_before_now(redis, queue))


# Ids read per call when listing a whole store: short calls, so Redis keeps serving the proxies.
_PAGE = 5000


async def _ids_before_now(redis: Redis, queue: str) -> list[str]:
    """The ids of the letters that failed before now, read before anything is done to them. Walking
    the live index instead would meet a replayed record again once it failed anew, wherever a
    worker's clock lags this host's (its failure time falls before the cutoff), for as long as the
    skew lasts."""
    cutoff = now_ms()
    ids: dict[str, None] = {}  # ordered, and an id that a concurrent write shifted into the next page counts once
    start = 0
    while raw := await redis.zrangebyscore(dlq_index_key(queue), "-inf", cutoff, start=start, num=_PAGE):
        ids.update((i.decode() if isinstance(i, bytes) else str(i), None) for i in raw)
        start += len(raw)
    return list(ids)


async def all_ids(redis: Redis, queue: str) -> list[str]:
    ids = await redis.zrange(dlq_index_key(queue), 0, -1)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def purge(redis: Redis, queue: str, ids: list[str]) -> int:
    """Delete dead letters, :data:`CHUNK` ids per transaction; returns how many existed."""
    removed = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(dlq_key(queue), *chunk)
            pipe.zrem(dlq_index_key(queue), *chunk)
            deleted, _ = await pipe.execute()
        removed += int(deleted)
    return removed
