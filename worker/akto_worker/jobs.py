"""The arq job functions. Each returns normally once every record it held is delivered, queued for a
retry, or dead-lettered, or raises arq's ``Retry`` so the whole job runs again later. arq treats any
other exception, and reaching the job timeout, as terminal and would drop the job: so every job
works to the deadlines of ``deadline.py``, which end well before arq's timeout."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from akto_ingest import dlq, violations
from akto_ingest.queue import add_batch, job_done, job_records

from . import metrics
from .deadline import job_limits
from .delivery import Outcome, dead_letter_for
from .retry import backoff_seconds
from .state import WorkerState

log = logging.getLogger("akto_worker")

# arq re-runs a job after a worker dies or is stopped mid-job. A batch that keeps killing its worker
# (out of memory, say) must not loop forever: after this many runs it is dead-lettered.
MAX_JOB_RUNS = 20
# How long arq waits before running again a job that could not store its retries and dead letters.
RERUN_DEFER_SECONDS = 5


async def deliver(ctx: dict[str, Any], records: list[str], attempt: int) -> dict[str, int]:
    """Deliver one batch; failed records go to a new, deferred retry job or to the dead letters."""
    state: WorkerState = ctx["akto"]
    redis = ctx["redis"]
    started = asyncio.get_running_loop().time()
    limits = job_limits(state.config.delivery_timeout)
    persist_by = started + limits.delivery_seconds + limits.persist_seconds
    if ctx.get("job_try", 1) > MAX_JOB_RUNS:
        letters = [
            dead_letter_for(raw, reason="worker_crash_loop", detail=f"batch ran {MAX_JOB_RUNS} times", attempts=attempt)
            for raw in records
        ]
        await _persist(redis, state, [], letters, attempt, persist_by)
        await _done(ctx, state, persist_by)
        return {"dead_lettered": len(letters)}
    try:
        outcome = await state.deliverer.deliver(records, attempt, started + limits.delivery_seconds)
    except Exception as exc:
        # A fault of ours, not of a record: keep the job, so arq runs it again (and, should the fault
        # persist, dead-letters it as a crash loop after MAX_JOB_RUNS runs).
        log.exception("delivering a batch of %d record(s) failed; the whole batch will run again", len(records))
        raise Retry(defer=RERUN_DEFER_SECONDS) from exc
    await _persist(redis, state, [i.raw for i in outcome.retry], outcome.dead, attempt, persist_by, outcome.violations)
    await _done(ctx, state, persist_by)
    metrics.DELIVERED.inc(outcome.delivered)
    if outcome.retry:
        log.warning(
            "akto delivery failed for %d record(s), attempt %d, retrying: %s call_ids=%s",
            len(outcome.retry),
            attempt + 1,
            outcome.last_error,
            ",".join(i.record.id for i in outcome.retry[:20]),
        )
    return _summary(outcome)


async def _done(ctx: dict[str, Any], state: WorkerState, deadline: float) -> None:
    """Every record of the job is delivered, dead-lettered or in a new job: it leaves the born index,
    by the job's persist ``deadline`` (the event loop's clock), so it never runs into arq's timeout.
    Best effort: a stale entry costs only a lookup in ``akto-ingest status``."""
    try:
        async with asyncio.timeout_at(deadline):
            await job_done(ctx["redis"], state.queue_name, str(ctx.get("job_id", "")))
    except (RedisError, TimeoutError) as exc:
        log.warning("cannot take a finished job out of the born index: %s", exc or "Redis did not answer in time")


def _summary(outcome: Outcome) -> dict[str, int]:
    return {"delivered": outcome.delivered, "retried": len(outcome.retry), "dead_lettered": len(outcome.dead)}


async def _persist(
    redis: Any,
    state: WorkerState,
    retry: list[str],
    letters: list[dlq.DeadLetter],
    attempt: int,
    deadline: float,
    found: list[violations.Violation] | None = None,
) -> None:
    """Store the retry job, the dead letters and the violations found by ``deadline`` (the event
    loop's clock), or raise ``Retry``: the job is still in Redis, so arq runs all of it again later
    and nothing is lost."""
    try:
        async with asyncio.timeout_at(deadline), redis.pipeline(transaction=True) as pipe:
            # One transaction, one round trip: Redis stores all of it or none of it, so a re-run never
            # meets a half-stored batch (its retry job stored, its dead letters not) and queues its
            # retries a second time.
            if retry:
                delay = backoff_seconds(attempt, state.config.backoff_base, state.config.backoff_max)
                add_batch(
                    pipe,
                    state.queue_name,
                    retry,
                    attempt=attempt + 1,
                    defer_ms=int(delay * 1000),
                    ttl_ms=state.job_ttl_ms,
                )
            await dlq.put_in(pipe, state.queue_name, letters)
            violations.add_in(pipe, state.queue_name, found or [])
            await pipe.execute()
    except (RedisError, TimeoutError) as exc:
        log.error(
            "cannot store %d retry record(s) and %d dead letter(s) in time (%s); the whole batch will run again",
            len(retry),
            len(letters),
            exc or "Redis did not answer before the job's deadline",
        )
        raise Retry(defer=RERUN_DEFER_SECONDS) from exc
    if retry:
        metrics.RETRIED.inc(len(retry))
    for letter in letters:
        metrics.DEAD_LETTERED.labels(letter.reason).inc()
        log.error(
            "akto record dead-lettered call_id=%s reason=%s detail=%s",
            letter.id,
            letter.reason,
            letter.detail,
        )


async def dead_letter_job(ctx: dict[str, Any], raw_b64: str, reason: str) -> dict[str, int]:
    """Store a queue entry this worker cannot run (``decode_job`` checked its frame), without ever
    executing it. A ``deliver`` job with arguments this version does not take keeps each of its records
    as a dead letter of its own (``unrunnable_job``), so a replay queues them as records; anything else is
    one dead letter of the whole entry (``undecodable_job``)."""
    raw = base64.b64decode(raw_b64)
    records = job_records(raw)
    if records is not None:
        letters = [dead_letter_for(record, reason="unrunnable_job", detail=reason) for record in records]
    else:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = "base64:" + raw_b64
        letters = [dlq.make(text, record_id=None, reason="undecodable_job", detail=reason)]
    state: WorkerState = ctx["akto"]
    limits = job_limits(state.config.delivery_timeout)
    deadline = asyncio.get_running_loop().time() + limits.delivery_seconds + limits.persist_seconds
    await _persist(ctx["redis"], state, [], letters, 0, deadline)
    return {"dead_lettered": len(letters)}
