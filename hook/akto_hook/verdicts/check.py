"""The inline Akto check (block mode): every byte of a request, one verdict, one Akto delay.

Use::

    checker = InlineCheck(AktoClient(akto, timeout=...), akto)
    decision = await checker.check(record)
    if decision.blocks:
        ...  # refuse with decision.reason (Akto's reason)
    elif decision.failure is not None:
        if fallback_passes(decision.failure, settings.unreachable_fallback, record.id):
            ...  # fail_open: let it through
        else:
            ...  # fail_closed: refuse (503)

A request whose envelope fits Akto's ``/api/http-proxy`` limits (2 MiB a body, 256 KiB a string) is
checked as it is, in one call. A longer one is split (:func:`split`) into parts within those limits,
overlapping so that a phrase crossing a boundary is whole in one part. The parts are checked
concurrently, so a long prompt costs one Akto delay, not one per part. Any part that blocks blocks
the request with Akto's reason; only when no part blocked and some part got no verdict is the
request a :class:`Failure`, for ``unreachable_fallback`` to decide. Text JSON cannot hold (a lone
surrogate) is repaired first, so neither size nor encoding can stop a check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, Fallback
from akto_ingest.errors import AktoBadResponse, AktoError, AktoHTTPError, AktoUnreachable, RecordTooLarge
from akto_ingest.record import Record
from akto_ingest.wire import ALLOW, MAX_STRING_BYTES, Verdict, encode, envelope

from .. import metrics, views
from ..views.generic import as_json

log = logging.getLogger("akto_hook")

# What one Akto call checks: a request, a response, or attachments.
Checked = Literal["request", "response", "files"]
FailureReason = Literal[
    "unreachable",
    "http_error",
    "unreadable_body",
    "akto_fail_open",
    "too_large",
    "unreadable_request",
    "internal_error",
]
# The reasons that are Akto's: the spec's "Akto unreachable" and "Akto returns error" rows.
AKTO_REASONS: frozenset[FailureReason] = frozenset({"unreachable", "http_error", "unreadable_body", "akto_fail_open"})

# The client's reason when Akto blocks without giving one.
DEFAULT_REASON = "Blocked by Akto guardrail"
# A part's requestPayload stays this far under Akto's string limit: room for the model name.
PART_BUDGET = MAX_STRING_BYTES - 4096
# Characters two neighbouring parts of one text share: a phrase up to this long that crosses a
# boundary is whole in the later part.
OVERLAP_CHARS = 8192


@dataclass(frozen=True)
class Failure:
    """Why no verdict could be made for (part of) a request."""

    reason: FailureReason
    message: str

    @property
    def from_akto(self) -> bool:
        return self.reason in AKTO_REASONS


@dataclass(frozen=True)
class Mask:
    """Akto's masking of one checked payload: the ``requestPayload`` we sent, and Akto's rewrite of it."""

    sent: str
    masked: str


@dataclass(frozen=True)
class Decision:
    """The outcome of one inline check.

    ``verdict`` is the verdict that decides (a block if any part blocked, else a flag if any part
    was flagged, else allow); ``failure`` is set only when no part blocked and some part got no
    verdict; ``parts`` is how many Akto calls the check took; ``masks`` holds Akto's rewrites of the
    parts it masked (``masking.py`` maps them back onto the request).
    """

    verdict: Verdict
    parts: int
    failure: Failure | None = None
    masks: tuple[Mask, ...] = ()
    # The request's text was checked in several parts (``split``): its masks map back by text. Not
    # ``parts > 1``, which also counts the attachments' own check (``file_check.py``).
    split: bool = False

    @property
    def masked(self) -> bool:
        return bool(self.masks) and not self.blocks

    @property
    def blocks(self) -> bool:
        return self.verdict.blocks

    @property
    def reason(self) -> str:
        return self.verdict.reason or DEFAULT_REASON


class InlineCheck:
    """Checks records against Akto's request guardrails, whatever their size or text."""

    def __init__(self, client: AktoClient, akto: AktoSettings) -> None:
        self._client = client
        self._akto = akto

    async def check(self, record: Record) -> Decision:
        """Ask Akto for a verdict on ``record``'s request. Never raises (but for cancellation)."""
        try:
            bodies = check_bodies(record, self._akto)
        except RecordTooLarge as exc:
            return Decision(ALLOW, 0, Failure("too_large", str(exc)))
        except Exception as exc:
            # Our own bug must not decide the request: it is a check that could not be made.
            log.exception("akto check could not be built call_id=%s", record.id)
            return Decision(ALLOW, 0, Failure("internal_error", f"cannot build the check: {exc}"))
        if len(bodies) == 1:
            return _decide([(bodies[0], await self._one(bodies[0]))], 1)
        return await self._concurrently(bodies)

    async def _concurrently(self, bodies: list[bytes]) -> Decision:
        tasks = [asyncio.ensure_future(self._sent_and_answer(body)) for body in bodies]
        results: list[tuple[bytes, Verdict | Failure]] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                body, result = await next_done
                if isinstance(result, Verdict) and result.blocks:
                    # One block decides: the other parts need not be waited for.
                    return Decision(result, len(bodies))
                results.append((body, result))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return _decide(results, len(bodies))

    async def _sent_and_answer(self, body: bytes) -> tuple[bytes, Verdict | Failure]:
        return body, await self._one(body)

    async def _one(self, body: bytes) -> Verdict | Failure:
        return await ask(self._client, body)


async def ask(
    client: AktoClient, body: bytes, *, check: Checked = "request", time_limit: float | None = None
) -> Verdict | Failure:
    """One ``/api/http-proxy`` check of ``body``: an encoded envelope's request or response, or the
    attachments of :func:`wire.files_body` (``check="files"``, within ``time_limit`` seconds when
    given). Akto's verdict, or the :class:`Failure` that stands for none. Never raises."""
    files = check == "files"
    what = "file check" if files else "check"
    try:
        verdict = await client.http_proxy(
            body,
            check_request=check == "request",
            check_response=check == "response",
            ingest=False,
            check_files=files,
            time_limit=time_limit,
        )
    except AktoError as exc:
        return Failure(_reason(exc), f"{what}: {exc}" if files else str(exc))
    except Exception as exc:
        log.exception("akto %s failed unexpectedly", what)
        return Failure("internal_error", f"the {what} failed: {exc!r}")
    if verdict.fail_open and not verdict.blocks:
        guardrail = "file guardrail" if files else "guardrail"
        return Failure("akto_fail_open", f"Akto's {guardrail} failed open: {verdict.error or 'no error given'}")
    return verdict


def _reason(exc: AktoError) -> FailureReason:
    if isinstance(exc, AktoUnreachable):
        return "unreachable"
    if isinstance(exc, AktoHTTPError):
        return "http_error"
    if isinstance(exc, AktoBadResponse):
        return "unreadable_body"
    return "http_error"


def _decide(results: list[tuple[bytes, Verdict | Failure]], parts: int) -> Decision:
    verdicts = [r for _, r in results if isinstance(r, Verdict)]
    for verdict in verdicts:
        if verdict.blocks:
            return Decision(verdict, parts)
    failure = next((r for _, r in results if isinstance(r, Failure)), None)
    flagged = next((v for v in verdicts if v.flagged), ALLOW)
    masks = tuple(
        Mask(_request_payload(body), r.modified_payload)
        for body, r in results
        if isinstance(r, Verdict) and r.modified_payload is not None
    )
    return Decision(flagged, parts, failure, masks, split=parts > 1)


def _request_payload(body: bytes) -> str:
    # The envelope as sent: Akto's ModifiedPayload is a rewrite of its requestPayload.
    return str(orjson.loads(body)["requestPayload"])


def fallback_passes(failure: Failure, fallback: Fallback, call_id: str) -> bool:
    """Apply ``unreachable_fallback`` to a check that got no verdict: count it in
    ``akto_hook_fallback_total{decision,reason}``, log it, and say whether the request may pass."""
    metrics.FALLBACK.labels(fallback, failure.reason).inc()
    if failure.from_akto:
        log.warning("akto check failed call_id=%s (%s, %s): %s", call_id, fallback, failure.reason, failure.message)
    else:
        log.error(
            "akto check could not be made call_id=%s (%s, %s): %s", call_id, fallback, failure.reason, failure.message
        )
    return fallback == "fail_open"


def repaired_envelope(record: Record, akto: AktoSettings) -> tuple[Record, dict[str, str]]:
    """``record``'s envelope, and the record it was built from: a repaired copy (:meth:`Record.repaired`)
    when its text could not be encoded as it is."""
    try:
        return record, envelope(record, akto)
    except TypeError:
        # orjson refuses text JSON cannot hold; check what can be checked.
        record = record.repaired()
        return record, envelope(record, akto)


def blocked_fields(reason: str, verdict: Verdict | None = None) -> dict[str, Any]:
    """The fields of a blocked record: status 400, the reason the client got and, from Akto's
    verdict, its policy, rule and severity."""
    fields: dict[str, Any] = {"status_code": 400, "blocked_reason": reason}
    if verdict is not None:
        fields["blocked_policy"] = verdict.policy or None
        fields["blocked_rule"] = verdict.rule or None
        fields["blocked_severity"] = verdict.severity or None
    return fields


def check_bodies(record: Record, akto: AktoSettings) -> list[bytes]:
    """The encoded ``/api/http-proxy`` bodies that together check all of ``record``'s request: the
    record itself when it fits Akto's limits, else one per part of :func:`split`.

    Raises :class:`RecordTooLarge` only when what is not the request body (the headers) is over them.
    """
    record, body = repaired_envelope(record, akto)
    try:
        return [encode(body)]
    except RecordTooLarge:
        pass
    return [
        encode(envelope(record.model_copy(update={"request_body": part}), akto)) for part in split(record.request_body)
    ]


def split(body: Mapping[str, Any], *, budget: int = PART_BUDGET, overlap: int = OVERLAP_CHARS) -> list[dict[str, Any]]:
    """Split a request body into chat requests whose ``requestPayload`` is at most ``budget`` bytes.

    Every piece of the body is in some part (``views.segments``): message contents keep their role,
    and what is not text (tool calls, tool definitions, a field no family module reads) is carried
    as its JSON. A text too long for one
    part continues in the next, repeating its last ``overlap`` characters there. Sizes are measured
    as Akto receives them, after both levels of JSON escaping (a control character costs 7 bytes).
    """
    model = body.get("model")
    frame: dict[str, Any] = {"model": model, "messages": []} if model is not None else {"messages": []}
    frame_cost = _payload_size(frame)
    if budget < frame_cost + 256:
        raise ValueError(f"a part budget of {budget} bytes leaves no room for text")
    parts: list[dict[str, Any]] = []
    messages: list[dict[str, str]] = []
    used = frame_cost

    def close_part() -> None:
        nonlocal messages, used
        parts.append({**frame, "messages": messages})
        messages, used = [], frame_cost

    for role, text in views.segments(body):
        start = 0
        while text:
            taken = _fit(role, text, start, budget - used)
            if taken == 0:
                if not messages:
                    raise RecordTooLarge(f"a message role of {len(role)} characters leaves no room for its text")
                close_part()
                continue
            message = {"role": role, "content": text[start : start + taken]}
            messages.append(message)
            used += _message_size(message)
            if start + taken >= len(text):
                break
            close_part()
            start += taken - min(overlap, taken // 2)
    if messages or not parts:
        close_part()
    return parts


def _payload_size(request_body: Any) -> int:
    # Exactly what wire.envelope makes of it: the body as JSON, wrapped as {"body": "<json>"}.
    return len(orjson.dumps({"body": as_json(request_body)}))


def _message_size(message: Mapping[str, str]) -> int:
    # One message's share of the payload: its JSON escaped once more, plus the comma before it.
    return len(orjson.dumps(as_json(message))) - 2 + 1


def _fit(role: str, text: str, start: int, room: int) -> int:
    """How many characters of ``text`` from ``start`` fit as one message in ``room`` bytes (0: none)."""
    # A character costs at least one byte, so no more than ``room`` characters can fit.
    taken = min(len(text) - start, room)
    while taken > 0:
        size = _message_size({"role": role, "content": text[start : start + taken]})
        if size <= room:
            return taken
        taken = min(taken - 1, taken * room // size)
    return 0
