"""The arq job functions. Each returns normally once every record it held is delivered, queued for a
retry, or dead-lettered: arq treats any other exception as terminal and would drop the job."""

from __future__ import annotations

import base64
import logging
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from akto_ingest import dlq
from akto_ingest.queue import enqueue_batch

from . import metrics
from .delivery import dead_letter_for
from .retry import backoff_seconds
from .state import WorkerState

log = logging.getLogger("akto_worker")

# arq re-runs a job after a worker dies or is stopped mid-job. A batch that keeps killing its worker
# (out of memory, say) must not loop forever: after this many runs it is dead-lettered.
MAX_JOB_RUNS = 20


async def deliver(ctx: dict[str, Any], records: list[str], attempt: int) -> dict[str, int]:
    """Deliver one batch; failed records go to a new, deferred retry job or to the dead letters."""
    state: WorkerState = ctx["akto"]
    redis = ctx["redis"]
    if ctx.get("job_try", 1) > MAX_JOB_RUNS:
        letters = [
            dead_letter_for(raw, reason="worker_crash_loop", detail=f"batch ran {MAX_JOB_RUNS} times", attempts=attempt)
            for raw in records
        ]
        await _persist(redis, state, [], letters, attempt)
        return {"dead_lettered": len(letters)}
    outcome = await state.deliverer.deliver(records, attempt)
    await _persist(redis, state, [i.raw for i in outcome.retry], outcome.dead, attempt)
    metrics.DELIVERED.inc(outcome.delivered)
    if outcome.retry:
        log.warning(
            "akto delivery failed for %d record(s), attempt %d, retrying: %s call_ids=%s",
            len(outcome.retry),
            attempt + 1,
            outcome.last_error,
            ",".join(i.record.id for i in outcome.retry[:20]),
        )
    return {"delivered": outcome.delivered, "retried": len(outcome.retry), "dead_lettered": len(outcome.dead)}


async def _persist(
    redis: Any, state: WorkerState, retry: list[str], letters: list[dlq.DeadLetter], attempt: int
) -> None:
    try:
        if retry:
            delay = backoff_seconds(attempt, state.config.backoff_base, state.config.backoff_max)
            await enqueue_batch(
                redis,
                state.queue_name,
                retry,
                attempt=attempt + 1,
                defer_ms=int(delay * 1000),
                ttl_ms=state.job_ttl_ms,
            )
            metrics.RETRIED.inc(len(retry))
        if letters:
            await dlq.put(redis, state.queue_name, letters)
            for letter in letters:
                metrics.DEAD_LETTERED.labels(letter.reason).inc()
                log.error(
                    "akto record dead-lettered call_id=%s reason=%s detail=%s",
                    letter.id,
                    letter.reason,
                    letter.detail,
                )
    except RedisError as exc:
        # Nothing was lost yet: the job is still in Redis, so have arq run all of it again later.
        log.error("cannot store retries or dead letters (%s); the whole batch will run again", exc)
        raise Retry(defer=5) from exc


async def dead_letter_job(ctx: dict[str, Any], raw_b64: str, reason: str) -> dict[str, int]:
    """Store a queue entry that is not one of our JSON jobs, without ever executing it."""
    raw = base64.b64decode(raw_b64)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = "base64:" + raw_b64
    state: WorkerState = ctx["akto"]
    letter = dlq.make(text, record_id=None, reason="undecodable_job", detail=reason)
    await _persist(ctx["redis"], state, [], [letter], 0)
    return {"dead_lettered": 1}
