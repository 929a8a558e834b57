"""The opt-in response check of block mode (``check_response: true``).

A response that is not streamed is checked before LiteLLM returns it: a block verdict answers 400
with Akto's reason, a mask is applied to the response in place (or, when it cannot be, blocks), and
a check that gets no verdict goes to ``unreachable_fallback`` as the request check does (503 when it
fails closed).

A streamed response reaches the client as it comes; its text and tool calls are assembled on the
way and checked once, at its end, as a chat completion (tool calls as ``tool_calls``, as an
unstreamed chat completion has them). A block, a mask (a text already sent cannot be masked) or a
fail-closed fallback then ends the stream with an error event: on chat completions
``data: {"error": ...}`` instead of ``[DONE]``; on the Responses API ``response.failed`` instead of
``response.completed`` (which is held back until the check is done); on Anthropic's
``/v1/messages`` ``event: error`` instead of ``message_stop`` (held back the same way).

The call keeps one record: a blocked response's record is written here (status 400, Akto's reason,
``blocked_on: response``), and the guardrail drops LiteLLM's own success or failure record of it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import HTTPException

from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, HookSettings
from akto_ingest.errors import RecordTooLarge
from akto_ingest.record import Record
from akto_ingest.wire import Verdict, encode, envelope

from . import calls, capture, masking, metrics
from .check import Failure, ask, blocked_fields, fallback_passes, repaired_envelope

log = logging.getLogger("akto_hook")

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})
STREAM_MASK_REASON = "Akto masked the response, and a streamed response cannot be masked once it was sent"


class StreamRefused(Exception):
    """Ends a stream with an error event: LiteLLM's stream generator turns an exception that is not an
    ``HTTPException`` into ``data: {"error": ...}`` (using ``message``, ``type`` and ``status_code``)
    and sends no ``[DONE]`` after it."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = "invalid_request_error" if status_code == 400 else "service_unavailable"
        self.param = None


class Refused(Exception):
    """The response may not pass: ``status`` and ``message`` are what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ResponseCheck:
    """Checks LLM responses inline; ``blocked`` writes a blocked call's one record."""

    def __init__(
        self,
        client: AktoClient,
        akto: AktoSettings,
        settings: HookSettings,
        blocked: Callable[[Record, calls.Key], Awaitable[None]],
        masks: masking.MaskedCalls,
    ) -> None:
        self._client = client
        self._akto = akto
        self._settings = settings
        self._blocked = blocked
        self._masks = masks

    @property
    def enabled(self) -> bool:
        return self._settings.check_response and self._settings.on_flagged == "block"

    async def checked(self, data: dict[str, Any], response: Any) -> Any:
        """A response that is not streamed: returned (masked in place where Akto masked it), or an
        ``HTTPException`` with what the client gets instead."""
        body = _body(response)
        if body is None:
            return response
        try:
            changes = await self._verdict(data, body)
            masking.apply_to_object(response, changes)
        except masking.Unmappable as exc:
            reason = f"Akto masked the response, and the mask cannot be applied: {exc}"
            await self._refuse(data, body, reason)
            raise HTTPException(status_code=400, detail=reason) from None
        except Refused as exc:
            raise HTTPException(status_code=exc.status, detail=exc.message) from None
        if changes:
            self._masked(data)
        return response

    async def stream(self, chunks: AsyncIterator[Any], data: dict[str, Any]) -> AsyncIterator[Any]:
        """Pass a stream through as it comes, then check its assembled text and tool calls once, at its end."""
        said = _Assembled()
        # A Responses API stream's terminal event is held until the check is done: LiteLLM reports a
        # failure on such a stream only before that event (as ``response.failed``).
        terminal: list[Any] = []
        # Anthropic's /v1/messages stream arrives as SSE bytes; its ``message_stop`` is held the same way.
        events = _SseEvents()
        async for chunk in chunks:
            if isinstance(chunk, bytes | str):
                if events.feed(chunk, said):
                    terminal.append(chunk)
                    continue
            else:
                _collect(chunk, said)
                if getattr(chunk, "type", None) in TERMINAL_EVENTS:
                    terminal.append(chunk)
                    continue
            for held in terminal:
                yield held
            terminal.clear()
            yield chunk
        if said:
            if events.seen:
                try:
                    await self._check_stream(data, said)
                except StreamRefused as exc:
                    # An SSE stream ends with Anthropic's ``error`` event in place of ``message_stop``.
                    yield _anthropic_error(exc, as_bytes=events.as_bytes)
                    return
            else:
                await self._check_stream(data, said)
        for held in terminal:
            yield held

    async def _check_stream(self, data: dict[str, Any], said: _Assembled) -> None:
        body = {"object": "chat.completion", "model": data.get("model"), "choices": said.choices()}
        try:
            masked = bool(await self._verdict(data, body))
        except Refused as exc:
            raise StreamRefused(exc.message, exc.status) from None
        except masking.Unmappable:
            masked = True
        if masked:
            await self._refuse(data, body, STREAM_MASK_REASON)
            raise StreamRefused(STREAM_MASK_REASON, 400)

    async def _verdict(self, data: dict[str, Any], body: dict[str, Any]) -> list[masking.Change]:
        """Ask Akto about ``body``; the changes its mask makes (none when it allows), or
        :class:`Refused`. A block writes the blocked record."""
        record = self._masks.applied(capture.from_request(data, "block"), calls.key_of(data))
        record = record.model_copy(update={"response_body": body})
        try:
            encoded = _encoded(record, self._akto)
        except RecordTooLarge as exc:
            result: Verdict | Failure = Failure("too_large", str(exc))
        else:
            result = await ask(self._client, encoded, check="response")
        if isinstance(result, Failure):
            if fallback_passes(result, self._settings.unreachable_fallback, record.id):
                return []
            status = 413 if result.reason == "too_large" else 503
            raise Refused(status, f"Akto guardrail could not check the response: {result.message}")
        if result.blocks:
            reason = result.reason or "Blocked by Akto guardrail"
            await self._refuse(data, body, reason, result)
            raise Refused(400, reason)
        if result.flagged:
            metrics.count_violation("flagged", result)
            log.warning(
                "akto flagged the response call_id=%s reason=%r policy=%r rule=%r severity=%s behaviour=%s "
                "(not blocking)",
                record.id,
                result.reason,
                result.policy,
                result.rule,
                result.severity or "-",
                result.behaviour,
            )
        if result.modified_payload is None:
            return []
        sent = orjson.loads(orjson.loads(encoded)["responsePayload"])
        return masking.changes(sent, masking.decode_payload(result.modified_payload))

    async def _refuse(
        self, data: dict[str, Any], body: dict[str, Any], reason: str, verdict: Verdict | None = None
    ) -> None:
        """Write the blocked record; ``verdict`` (Akto's block) adds its policy, rule and severity."""
        record = capture.from_request(data, "block")
        metrics.BLOCKED.inc()
        update = {**blocked_fields(reason, verdict), "metadata": {**record.metadata, "blocked_on": "response"}}
        if verdict is None:
            log.info("akto blocked the response call_id=%s reason=%r", record.id, reason)
        else:
            metrics.count_violation("blocked", verdict)
            log.info(
                "akto blocked the response call_id=%s reason=%r policy=%r rule=%r severity=%s",
                record.id,
                reason,
                verdict.policy,
                verdict.rule,
                verdict.severity or "-",
            )
        await self._blocked(record.model_copy(update=update), calls.key_of(data))

    def _masked(self, data: dict[str, Any]) -> None:
        metrics.MASKED.labels("response").inc()
        self._masks.remember(calls.key_of(data), "response")
        log.info("akto masked the response call_id=%s", data.get("litellm_call_id"))


def _encoded(record: Record, akto: AktoSettings) -> bytes:
    record, body = repaired_envelope(record, akto)
    try:
        return encode(body)
    except RecordTooLarge:
        # A long prompt must not stop the response check: the response is what is checked here.
        short = {"model": record.request_body.get("model"), "note": "request omitted: over Akto's size limits"}
        return encode(envelope(record.model_copy(update={"request_body": short}), akto))


def _body(response: Any) -> dict[str, Any] | None:
    if isinstance(response, Mapping):
        return dict(response)
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        body = dump()
        return body if isinstance(body, dict) else None
    return None


@dataclass
class _ToolCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, arguments: Any) -> None:
        if isinstance(arguments, str) and arguments:
            self.arguments.append(arguments)

    def update(self, id: Any = None, name: Any = None, arguments: Any = None) -> None:
        """Take what a chunk states whole over what was seen: a name is not sent in pieces (LiteLLM's
        own stream assembly keeps the last one), and a Responses API ``output_item.done`` repeats the
        arguments that its deltas already sent."""
        if isinstance(id, str) and id:
            self.id = id
        if isinstance(name, str) and name:
            self.name = name
        if isinstance(arguments, str) and arguments:
            self.arguments = [arguments]


class _Assembled:
    """What a stream said, by choice: its text and its tool calls (by their index in the stream)."""

    def __init__(self) -> None:
        self._texts: dict[int, list[str]] = {}
        self._calls: dict[int, dict[int, _ToolCall]] = {}

    def __bool__(self) -> bool:
        return bool(self._texts or self._calls)

    def text(self, piece: Any, choice: int = 0) -> None:
        if isinstance(piece, str) and piece:
            self._texts.setdefault(choice, []).append(piece)

    def call(self, index: Any, choice: int = 0) -> _ToolCall:
        # The index comes from the stream as it was sent: anything but a number is the first call.
        key = index if isinstance(index, int) else 0
        return self._calls.setdefault(choice, {}).setdefault(key, _ToolCall())

    def choices(self) -> list[dict[str, Any]]:
        """The choices of a chat completion, as a response that is not streamed has them: text as
        ``content`` (null when there is none), tool calls as ``tool_calls`` with JSON ``arguments``."""
        choices = []
        for index in sorted(self._texts.keys() | self._calls.keys()):
            parts = self._texts.get(index)
            message: dict[str, Any] = {"role": "assistant", "content": "".join(parts) if parts else None}
            calls = self._calls.get(index)
            if calls:
                message["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": "".join(call.arguments)},
                    }
                    for _, call in sorted(calls.items())
                ]
            choices.append({"index": index, "message": message})
        return choices


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _collect(chunk: Any, said: _Assembled) -> None:
    """Add a chunk's text and tool-call pieces to ``said``: chat completion deltas, or the Responses
    API's text, function call item and function call arguments events."""
    choices = getattr(chunk, "choices", None)
    if isinstance(choices, list):
        for choice in choices:
            index = int(getattr(choice, "index", 0) or 0)
            delta = getattr(choice, "delta", None)
            said.text(getattr(delta, "content", None), index)
            for piece in getattr(delta, "tool_calls", None) or []:
                function = _field(piece, "function")
                call = said.call(_field(piece, "index"), index)
                call.update(_field(piece, "id"), _field(function, "name"))
                call.add(_field(function, "arguments"))
        return
    kind = getattr(chunk, "type", None)
    if kind == "response.output_text.delta":
        said.text(getattr(chunk, "delta", None))
    elif kind == "response.function_call_arguments.delta":
        said.call(getattr(chunk, "output_index", 0)).add(getattr(chunk, "delta", None))
    elif kind in ("response.output_item.added", "response.output_item.done"):
        item = getattr(chunk, "item", None)
        if _field(item, "type") == "function_call":
            said.call(getattr(chunk, "output_index", 0)).update(
                _field(item, "call_id"), _field(item, "name"), _field(item, "arguments")
            )


class _SseEvents:
    """Reads Anthropic's SSE stream as it passes: the text deltas, and whether a chunk held
    ``message_stop``. Events may span chunks, so the unfinished tail is kept."""

    def __init__(self) -> None:
        self._tail = ""
        self.seen = False
        self.as_bytes = True

    def feed(self, chunk: bytes | str, said: _Assembled) -> bool:
        """Add ``chunk``'s text and tool use to ``said``; True when it ends the message (``message_stop``)."""
        self.seen = True
        self.as_bytes = isinstance(chunk, bytes)
        self._tail += chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        *complete, self._tail = self._tail.replace("\r\n", "\n").split("\n\n")
        stop = False
        for event in complete:
            for line in event.split("\n"):
                if not line.startswith("data:"):
                    continue
                try:
                    payload = orjson.loads(line[5:].strip())
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(payload, dict):
                    continue
                kind, block, delta = payload.get("type"), payload.get("content_block"), payload.get("delta")
                if kind == "content_block_start" and isinstance(block, dict) and block.get("type") == "tool_use":
                    said.call(payload.get("index")).update(block.get("id"), block.get("name"))
                elif kind == "content_block_delta" and isinstance(delta, dict):
                    if delta.get("type") == "text_delta":
                        said.text(delta.get("text"))
                    elif delta.get("type") == "input_json_delta":
                        said.call(payload.get("index")).add(delta.get("partial_json"))
                stop = stop or kind == "message_stop"
        return stop


def _anthropic_error(exc: StreamRefused, *, as_bytes: bool) -> bytes | str:
    kind = "invalid_request_error" if exc.status_code == 400 else "api_error"
    error = {"type": "error", "error": {"type": kind, "message": exc.message}}
    event = f"event: error\ndata: {orjson.dumps(error).decode()}\n\n"
    return event.encode() if as_bytes else event
