"""The violations log: the requests Akto blocked or flagged, with its policy details, for operators.

``akto-ingest violations`` reads it. The worker is its one writer, off the request path: blocked
records reach it through the queue like any record, and monitor-mode verdicts come with Akto's answer
to the delivery. The log is a Redis stream trimmed to about :data:`MAX_ENTRIES` entries, so it lives
as long as Redis does (AOF) and cannot grow without bound; the stream's entry ids are the times the
entries were written, so reading "since" a time is one range read.

This module also bounds the ``severity`` and ``policy`` labels the violation metrics carry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .queue import violations_key
from .record import Record
from .wire import Verdict

# About a week of one violation a minute; a few MB of Redis at most (every text is capped below).
MAX_ENTRIES = 10_000
# Akto's reasons and names are short; this only keeps a runaway one from bloating the log.
MAX_TEXT = 1000

Mode = Literal["blocked", "flagged"]


class Violation(BaseModel):
    """One request Akto blocked (block mode) or flagged (monitor mode, or an alert/warn verdict)."""

    time_ms: int
    call_id: str
    mode: Mode
    reason: str = ""
    policy: str = ""
    rule: str = ""
    severity: str = ""
    behaviour: str = ""
    path: str = ""


def of_blocked(record: Record) -> Violation | None:
    """The violation a blocked record stands for; None for a record that was not blocked."""
    if record.blocked_reason is None:
        return None
    return Violation(
        time_ms=record.created_ms,
        call_id=record.id,
        mode="blocked",
        reason=record.blocked_reason[:MAX_TEXT],
        policy=(record.blocked_policy or "")[:MAX_TEXT],
        rule=(record.blocked_rule or "")[:MAX_TEXT],
        severity=(record.blocked_severity or "")[:MAX_TEXT],
        behaviour="block",
        path=record.path,
    )


def of_verdict(record: Record, verdict: Verdict) -> Violation:
    """The violation of a record Akto flagged without blocking it (monitor mode never blocks)."""
    return Violation(
        time_ms=record.created_ms,
        call_id=record.id,
        mode="flagged",
        reason=verdict.reason[:MAX_TEXT],
        policy=verdict.policy[:MAX_TEXT],
        rule=verdict.rule[:MAX_TEXT],
        severity=verdict.severity[:MAX_TEXT],
        behaviour=verdict.behaviour or "block",
        path=record.path,
    )


async def add(redis: Redis, queue: str, violations: list[Violation]) -> None:
    """Append to the log in one round trip, trimming it to about :data:`MAX_ENTRIES`."""
    if not violations:
        return
    async with redis.pipeline(transaction=False) as pipe:
        add_in(pipe, queue, violations)
        await pipe.execute()


def add_in(pipe: Pipeline, queue: str, violations: list[Violation]) -> None:
    """Add :func:`add`'s writes to a pipeline or transaction the caller executes."""
    for violation in violations:
        pipe.xadd(violations_key(queue), {"v": violation.model_dump_json()}, maxlen=MAX_ENTRIES, approximate=True)


async def recent(redis: Redis, queue: str, *, limit: int = 50, since_ms: int | None = None) -> list[Violation]:
    """The newest ``limit`` violations, newest first; with ``since_ms``, only those written since then."""
    low = "-" if since_ms is None else str(since_ms)
    entries = await redis.xrevrange(violations_key(queue), max="+", min=low, count=limit)
    found = [fields.get(b"v") or fields.get("v") for _, fields in entries]
    return [Violation.model_validate_json(raw) for raw in found if raw]


async def count(redis: Redis, queue: str) -> int:
    return int(await redis.xlen(violations_key(queue)))


# Metric labels. Every distinct label value is a time series kept for the life of the process, and
# policy names come from Akto's configuration, not from us: a label per name would let an Akto admin
# (or a policy per customer) grow every proxy's and worker's /metrics without bound. So each process
# keeps the first MAX_POLICY_LABELS names it sees and counts the rest as "other"; the violations log
# has every name. Severities are a fixed set.
MAX_POLICY_LABELS = 20
MAX_LABEL_CHARS = 64
SEVERITIES = frozenset({"critical", "high", "medium", "low", "info"})
NO_VALUE = "none"
OTHER = "other"


def severity_label(severity: str) -> str:
    """``severity`` as a metric label: one of :data:`SEVERITIES`, ``none`` or ``other``."""
    value = severity.strip().lower()
    if not value:
        return NO_VALUE
    return value if value in SEVERITIES else OTHER


class PolicyLabels:
    """Maps policy names to metric label values: the first ``limit`` names as themselves, then ``other``."""

    def __init__(self, limit: int = MAX_POLICY_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, policy: str) -> str:
        value = policy.strip()[:MAX_LABEL_CHARS]
        if not value:
            return NO_VALUE
        if value in self._seen:
            return value
        if len(self._seen) < self._limit and value not in (NO_VALUE, OTHER):
            self._seen.add(value)
            return value
        return OTHER
