"""Delivering one batch of records to Akto: per record (``/api/http-proxy``) or in bulk (``/api/ingestData``).

A batch never fails as a whole. Each record ends in exactly one of three lists: delivered, to retry,
or dead letters, and the job (``jobs.py``) persists the last two before it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from akto_ingest import dlq
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, WorkerConfig
from akto_ingest.errors import AktoError, AktoHTTPError, RecordTooLarge
from akto_ingest.record import Record, now_ms
from akto_ingest.wire import MAX_BATCH_BYTES, batch_body, encode, envelope, with_publish_flag

from . import metrics
from .retry import is_retryable

log = logging.getLogger("akto_worker")

# A batch job must finish well inside arq's job timeout (see settings.py): whatever is still
# in flight at this point is handed to the retry job instead of being cut off by arq.
BATCH_BUDGET_SECONDS = 30.0
BATCH_WRAPPER_BYTES = len(batch_body([]))


@dataclass
class _Item:
    raw: str
    record: Record
    encoded: bytes


@dataclass
class Outcome:
    delivered: int = 0
    retry: list[_Item] = field(default_factory=list)
    dead: list[dlq.DeadLetter] = field(default_factory=list)
    last_error: str = ""


class Deliverer:
    """Sends batches to Akto with bounded concurrency shared by every job in the process."""

    def __init__(self, client: AktoClient, akto: AktoSettings, config: WorkerConfig) -> None:
        self._client = client
        self._akto = akto
        self._config = config
        self._slots = asyncio.Semaphore(config.concurrency)

    async def deliver(self, records: list[str], attempt: int) -> Outcome:
        outcome = Outcome()
        items = self._prepare(records, attempt, outcome)
        if self._config.delivery_mode == "batch":
            pending = self._send_batches(items, attempt, outcome)
        else:
            pending = self._send_each(items, attempt, outcome)
        await pending
        self._expire_old(outcome, attempt)
        return outcome

    def _prepare(self, records: list[str], attempt: int, outcome: Outcome) -> list[_Item]:
        items = []
        for raw in records:
            try:
                record = Record.from_json(raw)
                encoded = encode(envelope(record, self._akto))
            except RecordTooLarge as exc:
                outcome.dead.append(
                    dlq.make(
                        raw, record_id=record.id, reason="too_large", detail=str(exc), created_ms=record.created_ms
                    )
                )
                continue
            except Exception as exc:  # one bad record must never fail its whole batch
                outcome.dead.append(dead_letter_for(raw, reason="invalid_record", detail=str(exc)))
                continue
            items.append(_Item(raw, record, encoded))
        return items

    async def _send_each(self, items: list[_Item], attempt: int, outcome: Outcome) -> None:
        akto_down = asyncio.Event()
        tasks = {asyncio.create_task(self._send_one(item, attempt, outcome, akto_down)): item for item in items}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=BATCH_BUDGET_SECONDS)
        for task in late:
            task.cancel()
            outcome.retry.append(tasks[task])
        if late:
            outcome.last_error = f"batch budget of {BATCH_BUDGET_SECONDS}s ran out"

    async def _send_one(self, item: _Item, attempt: int, outcome: Outcome, akto_down: asyncio.Event) -> None:
        # Once Akto looks down, the rest of the batch waits for the retry instead of each
        # record spending a full timeout to learn the same thing.
        if akto_down.is_set():
            outcome.retry.append(item)
            return
        async with self._slots:
            if akto_down.is_set():
                outcome.retry.append(item)
                return
            monitor = item.record.mode == "monitor"
            try:
                with metrics.AKTO_LATENCY.time():
                    verdict = await self._client.http_proxy(
                        item.encoded, check_request=monitor, check_response=monitor, ingest=True
                    )
            except AktoError as exc:
                self._failed([item], exc, attempt, outcome)
                if is_retryable(exc):
                    akto_down.set()
                return
        outcome.delivered += 1
        if monitor and verdict.flagged:
            metrics.VIOLATIONS.inc()
            log.warning(
                "akto violation call_id=%s reason=%r behaviour=%s",
                item.record.id,
                verdict.reason,
                verdict.behaviour or "block",
            )

    async def _send_batches(self, items: list[_Item], attempt: int, outcome: Outcome) -> None:
        chunks: list[tuple[list[_Item], list[bytes]]] = []
        chunk: list[_Item] = []
        bodies: list[bytes] = []
        size = 0
        for item in items:
            # Monitor records ask Akto to check them asynchronously: ingestData returns no verdict.
            body = with_publish_flag(item.encoded) if item.record.mode == "monitor" else item.encoded
            if chunk and size + len(body) + 1 > MAX_BATCH_BYTES - BATCH_WRAPPER_BYTES:
                chunks.append((chunk, bodies))
                chunk, bodies, size = [], [], 0
            chunk.append(item)
            bodies.append(body)
            size += len(body) + 1  # and its separator
        if chunk:
            chunks.append((chunk, bodies))
        for chunk, bodies in chunks:
            try:
                async with self._slots:
                    with metrics.AKTO_LATENCY.time():
                        await self._client.ingest_batch(bodies)
            except AktoError as exc:
                if is_retryable(exc):
                    self._failed(chunk, exc, attempt, outcome)
                    continue
                # Akto refuses the whole call for one bad record and does not say which:
                # send this chunk one by one so only the bad ones are dead-lettered.
                await self._send_each(chunk, attempt, outcome)
                continue
            outcome.delivered += len(chunk)

    def _failed(self, items: list[_Item], exc: AktoError, attempt: int, outcome: Outcome) -> None:
        outcome.last_error = str(exc)
        if is_retryable(exc):
            outcome.retry.extend(items)
            return
        status = exc.status if isinstance(exc, AktoHTTPError) else None
        for item in items:
            outcome.dead.append(
                dlq.make(
                    item.raw,
                    record_id=item.record.id,
                    reason="rejected",
                    detail=str(exc),
                    attempts=attempt + 1,
                    created_ms=item.record.created_ms,
                    last_status=status,
                )
            )

    def _expire_old(self, outcome: Outcome, attempt: int) -> None:
        """Records still failing after the retention period leave the queue for the dead letters."""
        oldest_allowed = now_ms() - self._config.retention_seconds * 1000
        keep = []
        for item in outcome.retry:
            if item.record.created_ms < oldest_allowed:
                outcome.dead.append(
                    dlq.make(
                        item.raw,
                        record_id=item.record.id,
                        reason="retries_exhausted",
                        detail=outcome.last_error,
                        attempts=attempt + 1,
                        created_ms=item.record.created_ms,
                    )
                )
            else:
                keep.append(item)
        outcome.retry = keep


def dead_letter_for(raw: str, *, reason: str, detail: str, attempts: int = 0) -> dlq.DeadLetter:
    """A dead letter for a raw queue entry, keyed by its record's id when one can be read."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    fields = value if isinstance(value, dict) else {}
    record_id = fields.get("id") if isinstance(fields.get("id"), str) and fields.get("id") else None
    created = fields.get("created_ms") if isinstance(fields.get("created_ms"), int) else None
    return dlq.make(raw, record_id=record_id, reason=reason, detail=detail, attempts=attempts, created_ms=created)
