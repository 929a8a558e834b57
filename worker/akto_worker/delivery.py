"""Delivering one batch of records to Akto: per record (``/api/http-proxy``) or in bulk (``/api/ingestData``).

A batch never fails as a whole. Every send returns one result per record it was given (delivered,
to retry, or a dead letter) and :meth:`Deliverer.deliver` gathers them into an :class:`Outcome`, which
the job (``jobs.py``) persists. A send that ends in an error we did not foresee, or that is still
running at the job's delivery deadline, means retry.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from akto_ingest import dlq, violations
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, WorkerConfig
from akto_ingest.errors import AktoError, AktoHTTPError, RecordTooLarge
from akto_ingest.queue import MAX_CREATED_MS, MIN_CREATED_MS, oldest_created_ms
from akto_ingest.record import Record, now_ms
from akto_ingest.wire import (
    BATCH_PREFIX,
    BATCH_SUFFIX,
    HTTP_PROXY_LIMITS,
    INGEST_DATA_LIMITS,
    encode,
    envelope,
    too_large,
    with_publish_flag,
)

from . import metrics
from .deadline import job_limits
from .retry import is_retryable

log = logging.getLogger("akto_worker")

BATCH_WRAPPER_BYTES = len(BATCH_PREFIX) + len(BATCH_SUFFIX)
DEADLINE_PASSED = "the job's delivery deadline passed"


@dataclass(frozen=True)
class _Item:
    raw: str
    record: Record
    encoded: bytes
    # Over http-proxy's limits, so even a lone send goes through ingestData.
    ingest_only: bool

    @property
    def entry(self) -> bytes:
        """Its ingestData batch entry: a monitor record asks Akto to check it asynchronously,
        since ingestData returns no verdict."""
        return with_publish_flag(self.encoded) if self.record.mode == "monitor" else self.encoded


@dataclass(frozen=True)
class Delivered:
    item: _Item
    # Akto flagged the monitor-mode record as it took it.
    flagged: violations.Violation | None = None


@dataclass(frozen=True)
class ToRetry:
    item: _Item
    # Empty when the record was not sent at all because Akto had just failed for the batch.
    error: str


@dataclass(frozen=True)
class Dead:
    letter: dlq.DeadLetter


Result = Delivered | ToRetry | Dead


@dataclass(frozen=True)
class Outcome:
    """Where each record of a batch ended: every record is in exactly one of the three."""

    delivered: int
    retry: list[_Item]
    dead: list[dlq.DeadLetter]
    last_error: str
    # Delivered records Akto blocked (their record says so) or flagged (its answer said so).
    violations: list[violations.Violation] = field(default_factory=list)


class Deliverer:
    """Sends batches to Akto with bounded concurrency shared by every job in the process."""

    def __init__(self, client: AktoClient, akto: AktoSettings, config: WorkerConfig) -> None:
        self._client = client
        self._akto = akto
        self._config = config
        self._slots = asyncio.Semaphore(config.concurrency)

    async def deliver(self, records: list[str], attempt: int, deadline: float | None = None) -> Outcome:
        """Deliver what can be delivered before ``deadline`` (on the event loop's clock; by default
        the job's delivery budget from now). The rest is to retry."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + job_limits(self._config.delivery_timeout).delivery_seconds
        results: list[Result] = []
        items = []
        for raw in records:
            prepared = self._prepare(raw)
            if isinstance(prepared, Dead):
                results.append(prepared)
            else:
                items.append(prepared)
        if self._config.delivery_mode == "batch":
            results += await self._send_batches(items, attempt, deadline)
        else:
            results += await self._send_each(items, attempt, deadline)
        return self._outcome(results, attempt)

    def _prepare(self, raw: str) -> _Item | Dead:
        try:
            record = Record.from_json(raw)
            try:
                body = envelope(record, self._akto)
            except TypeError:
                # A value orjson cannot write (an integer past 64 bits): carried as its text.
                record = record.repaired()
                body = envelope(record, self._akto)
            encoded = encode(body, INGEST_DATA_LIMITS)
        except RecordTooLarge as exc:
            return Dead(
                dlq.make(raw, record_id=record.id, reason="too_large", detail=str(exc), created_ms=record.created_ms)
            )
        except Exception as exc:  # one bad record must never fail its whole batch
            return Dead(dead_letter_for(raw, reason="invalid_record", detail=str(exc)))
        return _Item(raw, record, encoded, ingest_only=bool(too_large(body, encoded, HTTP_PROXY_LIMITS)))

    async def _send_each(self, items: list[_Item], attempt: int, deadline: float) -> list[Result]:
        # Once Akto looks down, the rest of the batch waits for the retry instead of each
        # record spending a full timeout to learn the same thing.
        akto_down = asyncio.Event()
        ended = await _run_until(deadline, [self._send_one(item, attempt, akto_down) for item in items])
        return [_settle(item, end) for item, end in zip(items, ended, strict=True)]

    async def _send_one(self, item: _Item, attempt: int, akto_down: asyncio.Event) -> Result:
        if akto_down.is_set():
            return ToRetry(item, "")
        async with self._slots:
            if akto_down.is_set():
                return ToRetry(item, "")
            try:
                with metrics.AKTO_LATENCY.time():
                    flagged = await self._post_one(item)
            except AktoError as exc:
                if is_retryable(exc):
                    akto_down.set()
                return self._failed(item, exc, attempt)
        return Delivered(item, flagged)

    async def _post_one(self, item: _Item) -> violations.Violation | None:
        """Send one record; for a monitor record Akto flagged, the violation (logged and counted)."""
        if item.ingest_only:
            await self._client.ingest_batch([item.entry])
            return None
        monitor = item.record.mode == "monitor"
        verdict = await self._client.http_proxy(
            item.encoded, check_request=monitor, check_response=monitor, ingest=True
        )
        if not (monitor and verdict.flagged):
            return None
        violation = violations.of_verdict(item.record, verdict)
        metrics.count_violation(violation)
        log.warning(
            "akto violation call_id=%s reason=%r policy=%r rule=%r severity=%s behaviour=%s",
            violation.call_id,
            violation.reason,
            violation.policy,
            violation.rule,
            violation.severity or "-",
            violation.behaviour,
        )
        return violation

    async def _send_batches(self, items: list[_Item], attempt: int, deadline: float) -> list[Result]:
        results: list[Result] = []
        chunks = list(_chunks(items))
        for index, (chunk, entries) in enumerate(chunks):
            sent = await self._send_chunk(chunk, entries, attempt, deadline)
            results += sent
            if any(isinstance(r, ToRetry) for r in sent):
                # Akto is down or the deadline passed: the later chunks wait for the retry too.
                results += [ToRetry(item, "") for later, _ in chunks[index + 1 :] for item in later]
                break
        return results

    async def _send_chunk(
        self, chunk: list[_Item], entries: list[bytes], attempt: int, deadline: float
    ) -> list[Result]:
        window = asyncio.timeout_at(deadline)
        try:
            async with window:
                return await self._post_chunk(chunk, entries, attempt, deadline)
        except Exception as exc:
            if window.expired():
                return [ToRetry(item, DEADLINE_PASSED) for item in chunk]
            log.error("unexpected error delivering %d record(s); they will be retried", len(chunk), exc_info=exc)
            return [ToRetry(item, f"unexpected error: {exc!r}") for item in chunk]

    async def _post_chunk(
        self, chunk: list[_Item], entries: list[bytes], attempt: int, deadline: float
    ) -> list[Result]:
        try:
            async with self._slots:
                with metrics.AKTO_LATENCY.time():
                    await self._client.ingest_batch(entries)
        except AktoError as exc:
            if is_retryable(exc) or len(chunk) == 1:
                return [self._failed(item, exc, attempt) for item in chunk]
            # Akto refuses the whole call for one bad record and does not say which:
            # send this chunk one by one so only the bad ones are dead-lettered.
            return await self._send_each(chunk, attempt, deadline)
        return [Delivered(item) for item in chunk]

    def _failed(self, item: _Item, exc: AktoError, attempt: int) -> Result:
        if is_retryable(exc):
            return ToRetry(item, str(exc))
        return Dead(
            dlq.make(
                item.raw,
                record_id=item.record.id,
                reason="rejected",
                detail=str(exc),
                attempts=attempt + 1,
                created_ms=item.record.created_ms,
                last_status=exc.status if isinstance(exc, AktoHTTPError) else None,
            )
        )

    def _outcome(self, results: list[Result], attempt: int) -> Outcome:
        """Gather the results; records still failing after the retention period become dead letters."""
        errors = [r.error for r in results if isinstance(r, ToRetry) and r.error]
        errors = errors or [r.letter.detail for r in results if isinstance(r, Dead) and r.letter.reason == "rejected"]
        last_error = errors[-1] if errors else ""
        oldest_allowed = now_ms() - self._config.retention_seconds * 1000
        delivered = 0
        retry: list[_Item] = []
        dead: list[dlq.DeadLetter] = []
        found: list[violations.Violation] = []
        for result in results:
            if isinstance(result, Delivered):
                delivered += 1
                violation = result.flagged or violations.of_blocked(result.item.record)
                if violation is not None:
                    found.append(violation)
            elif isinstance(result, Dead):
                dead.append(result.letter)
            elif result.item.record.retained_from_ms < oldest_allowed:
                dead.append(
                    dlq.make(
                        result.item.raw,
                        record_id=result.item.record.id,
                        reason="retries_exhausted",
                        detail=result.error or last_error,
                        attempts=attempt + 1,
                        created_ms=result.item.record.created_ms,
                    )
                )
            else:
                retry.append(result.item)
        return Outcome(delivered=delivered, retry=retry, dead=dead, last_error=last_error, violations=found)


async def _run_until(deadline: float, sends: list[Coroutine[Any, Any, Result]]) -> list[Result | Exception | None]:
    """Run the sends concurrently until ``deadline`` (the event loop's clock). Each one ends as its
    result, the exception it raised, or ``None`` when it was still running at the deadline."""
    tasks = [asyncio.create_task(send) for send in sends]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    finally:
        # Nothing outlives the job, whether the deadline passed or the job itself was cancelled.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    ended: list[Result | Exception | None] = []
    for task in tasks:
        exc = None if task.cancelled() else task.exception()
        if task.cancelled():
            ended.append(None)
        elif isinstance(exc, Exception):
            ended.append(exc)
        elif exc is not None:
            raise exc
        else:
            ended.append(task.result())
    return ended


def _settle(item: _Item, end: Result | Exception | None) -> Result:
    """A send's end as a result: late (``None``) or failing in a way we did not foresee means retry."""
    if end is None:
        return ToRetry(item, DEADLINE_PASSED)
    if isinstance(end, Exception):
        log.error("unexpected error delivering call_id=%s; it will be retried", item.record.id, exc_info=end)
        return ToRetry(item, f"unexpected error: {end!r}")
    return end


def _chunks(items: list[_Item]) -> Iterator[tuple[list[_Item], list[bytes]]]:
    """Consecutive items, with their batch entries, whose body stays within ingestData's limit."""
    chunk: list[_Item] = []
    entries: list[bytes] = []
    size = 0
    for item in items:
        entry = item.entry
        if chunk and size + len(entry) + 1 > INGEST_DATA_LIMITS.max_body_bytes - BATCH_WRAPPER_BYTES:
            yield chunk, entries
            chunk, entries, size = [], [], 0
        chunk.append(item)
        entries.append(entry)
        size += len(entry) + 1  # and its separator
    if chunk:
        yield chunk, entries


def dead_letter_for(raw: str, *, reason: str, detail: str, attempts: int = 0) -> dlq.DeadLetter:
    """A dead letter for a raw queue entry, keyed by its record's id when one can be read. Never raises,
    whatever ``raw`` holds: it is the last step of every failure path."""
    record_id, created = _id_and_capture_time(raw)
    return dlq.make(raw, record_id=record_id, reason=reason, detail=detail, attempts=attempts, created_ms=created)


# A record's own id and capture time come first in its JSON (``{"v":1,"id":…,"mode":…,"created_ms":…``),
# so an entry no parser takes still names them.
_LEADING_ID = re.compile(r'\s*\{\s*"v"\s*:\s*\d+\s*,\s*"id"\s*:\s*("(?:[^"\\]|\\.){1,1000}")')


def _id_and_capture_time(raw: str) -> tuple[str | None, int | None]:
    """The id and ``created_ms`` of a raw entry, each None when it does not say. orjson's parser stops at
    1,024 levels with an error, where ``json`` would recurse to a ``RecursionError``."""
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        fields = None
    if isinstance(fields, dict):
        record_id, created = fields.get("id"), fields.get("created_ms")
    else:
        found = _LEADING_ID.match(raw)
        try:
            record_id = orjson.loads(found.group(1)) if found else None
        except orjson.JSONDecodeError:
            record_id = None
        created = oldest_created_ms([raw], default=0) or None
    return (
        record_id if isinstance(record_id, str) and record_id else None,
        created if type(created) is int and MIN_CREATED_MS <= created <= MAX_CREATED_MS else None,
    )
