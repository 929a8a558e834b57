"""The opt-in response check of block mode (``check_response: true``).

A response that is not streamed is checked before LiteLLM returns it: a block verdict answers 400
with Akto's reason, a mask is applied to the response in place (or, when it cannot be, blocks), and
a check that gets no verdict goes to ``unreachable_fallback`` as the request check does (503 when it
fails closed).

A streamed response reaches the client as it comes; what it says is assembled on the way and checked
once, at its end, shaped as the same response unstreamed: a chat completion (tool calls as
``tool_calls``, a legacy ``function_call`` as such, other delta fields such as reasoning by their
names) or a text completion (``choices[].text``). Anthropic's, Gemini's and the Responses API's
events are read the same way. A chunk of a shape no reader knows is checked as it came, whole (as
``unread_chunks``): nothing a stream says passes unchecked. A block, a mask (a text already sent
cannot be masked) or a fail-closed fallback then ends the stream with an error event: on chat and
text completions ``data: {"error": ...}`` instead of ``[DONE]``; on the Responses API
``response.failed`` instead of ``response.completed`` (which is held back until the check is done);
on Anthropic's ``/v1/messages`` ``event: error`` instead of ``message_stop`` (held back the same
way), and as the last event of any other SSE stream (Gemini's, pass-through routes).

The call keeps one record: a blocked response's record is written here (status 400, Akto's reason,
``blocked_on: response``), and the guardrail drops LiteLLM's own success or failure record of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import orjson
from fastapi import HTTPException

from akto_ingest.akto_client import AktoClient
from akto_ingest.config import AktoSettings, HookSettings
from akto_ingest.errors import RecordTooLarge
from akto_ingest.record import Record
from akto_ingest.wire import Verdict, encode, envelope

from .. import calls, metrics
from ..views import capture
from . import masking
from .check import DEFAULT_REASON, Failure, ask, blocked_fields, fallback_passes, repaired_envelope

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
        # End-of-stream checks in progress, by call id: LiteLLM may log such a call's success before
        # the check is done (on /v1/completions it does not wait for the guardrails).
        # Streams whose end-of-stream check is running, by the call's key (``calls.py``).
        self._checking: calls.PerCall[asyncio.Future[None]] = calls.PerCall()

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
        if events.seen:
            events.finish(said)
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

    async def settled(self, key: calls.Key) -> None:
        """Return once the end-of-stream check of the call ``key`` names (if one runs) is done, so a
        success record LiteLLM logs before it knows of a refusal can be dropped. Shielded: a cancelled
        caller stops waiting alone."""
        pending = self._checking.get(key)
        if pending is not None:
            await asyncio.shield(pending)

    async def _check_stream(self, data: dict[str, Any], said: _Assembled) -> None:
        # Registered before the first await: LiteLLM's success logging of the stream is a task that
        # starts once the stream has ended, so it finds the check in progress.
        key = calls.key_of(data)
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._checking[key] = settled
        try:
            body = said.body(data.get("model"))
            try:
                masked = bool(await self._verdict(data, body))
            except Refused as exc:
                raise StreamRefused(exc.message, exc.status) from None
            except masking.Unmappable:
                masked = True
            if masked:
                await self._refuse(data, body, STREAM_MASK_REASON)
                raise StreamRefused(STREAM_MASK_REASON, 400)
        finally:
            settled.set_result(None)
            if self._checking.get(key) is settled:
                self._checking.pop(key)

    async def _verdict(self, data: dict[str, Any], body: dict[str, Any]) -> list[masking.Change]:
        """Ask Akto about ``body``; the changes its mask makes (none when it allows), or
        :class:`Refused`. A block writes the blocked record."""
        # The request is the response's context here: a value its view cannot read is named, not
        # a reason to fail the response check (the request check already applied the fallback to it).
        record = self._masks.applied(capture.from_request(data, "block", strict=False), calls.key_of(data))
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
            reason = result.reason or DEFAULT_REASON
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
        record = capture.from_request(data, "block", strict=False)
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
    """What a stream said, by choice: its text, its tool calls (by their index in the stream), a legacy
    ``function_call``, any other field a delta carries (by name), and, whole, each chunk of a shape
    none of these readers knows: the check is never shown less than the client got."""

    def __init__(self) -> None:
        self.object = "chat.completion"
        self._texts: dict[int, list[str]] = {}
        self._calls: dict[int, dict[int, _ToolCall]] = {}
        self._functions: dict[int, _ToolCall] = {}
        self._extras: dict[int, dict[str, list[Any]]] = {}
        self.unread: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self._texts or self._calls or self._functions or self._extras or self.unread)

    def text(self, piece: Any, choice: int = 0) -> None:
        if isinstance(piece, str) and piece:
            self._texts.setdefault(choice, []).append(piece)

    def call(self, index: Any, choice: int = 0) -> _ToolCall:
        # The index comes from the stream as it was sent: anything but a number is the first call.
        key = index if isinstance(index, int) else 0
        return self._calls.setdefault(choice, {}).setdefault(key, _ToolCall())

    def next_call(self, choice: int = 0) -> _ToolCall:
        """A call that arrives whole, with no index of its own (Gemini's ``functionCall``)."""
        calls = self._calls.setdefault(choice, {})
        return calls.setdefault(len(calls), _ToolCall())

    def function(self, choice: int = 0) -> _ToolCall:
        """The legacy ``function_call`` of a choice (one per message, sent in pieces like a tool call)."""
        return self._functions.setdefault(choice, _ToolCall())

    def extra(self, name: str, value: Any, choice: int = 0) -> None:
        if value is None or value == "" or value == [] or value == {}:
            return
        self._extras.setdefault(choice, {}).setdefault(name, []).append(
            value if isinstance(value, str) else _plain(value)
        )

    def keep(self, chunk: Any) -> None:
        """A chunk no reader knows: checked as it came."""
        self.unread.append(_plain(chunk))

    def body(self, model: Any) -> dict[str, Any]:
        """The response Akto is asked about: shaped as the same response unstreamed (a chat or text
        completion), with the chunks no reader knew as ``unread_chunks``."""
        body: dict[str, Any] = {"object": self.object, "model": model, "choices": self.choices()}
        if self.unread:
            body["unread_chunks"] = self.unread
        return body

    def choices(self) -> list[dict[str, Any]]:
        """The choices of a chat completion, as a response that is not streamed has them: text as
        ``content`` (null when there is none), tool calls as ``tool_calls`` with JSON ``arguments``;
        or, for a text completion, its ``text``. Other delta fields keep their names: text joined,
        anything else listed."""
        choices = []
        for index in sorted(self._texts.keys() | self._calls.keys() | self._functions.keys() | self._extras.keys()):
            parts = self._texts.get(index)
            extras = {name: _joined(values) for name, values in self._extras.get(index, {}).items()}
            if self.object == "text_completion":
                choices.append({"index": index, "text": "".join(parts) if parts else "", **extras})
                continue
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
            function = self._functions.get(index)
            if function is not None:
                message["function_call"] = {"name": function.name, "arguments": "".join(function.arguments)}
            message.update(extras)
            choices.append({"index": index, "message": message})
        return choices


def _joined(values: list[Any]) -> Any:
    return "".join(values) if all(isinstance(v, str) for v in values) else values


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it: a model dumped, bytes decoded, anything unknown as its text."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            value = dump()
        except Exception:
            return str(value)
    try:
        return orjson.loads(orjson.dumps(value, default=str))
    except (TypeError, orjson.JSONEncodeError):
        return str(value)


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _fields(value: Any) -> Iterable[tuple[str, Any]]:
    """Every field of a delta or choice: a mapping's items, or a model's fields and extra fields (on
    LiteLLM's ``Delta`` the content, tool calls and audio live among the extra ones)."""
    if isinstance(value, Mapping):
        return value.items()
    extra = getattr(value, "__pydantic_extra__", None)
    return chain(getattr(value, "__dict__", {}).items(), extra.items() if isinstance(extra, dict) else ())


# What a stream's choice carries besides the text it says: no text of the model's own.
CHOICE_BOOKKEEPING = frozenset({"index", "finish_reason", "logprobs", "delta", "text", "message", "enhancements"})
# Responses API events that say nothing new: lifecycle, and the ``.done`` repeats of what deltas sent.
RESPONSES_ANNOUNCEMENTS = (
    ".created",
    ".queued",
    ".in_progress",
    ".completed",
    ".incomplete",
    ".failed",
    ".added",
    ".done",
    ".searching",
    ".generating",
    ".interpreting",
)
# Output items whose content the deltas stream: their ``output_item.done`` repeats it.
STREAMED_ITEMS = frozenset({"message", "function_call", "reasoning"})
ANTHROPIC_PLAIN_EVENTS = frozenset(
    {"message_start", "content_block_stop", "message_delta", "message_stop", "ping", "error"}
)


def _collect(chunk: Any, said: _Assembled) -> None:
    """Add a chunk to ``said``: what a reader knows, read; anything else, kept whole."""
    if not _read(chunk, said):
        said.keep(chunk)


def _read(chunk: Any, said: _Assembled) -> bool:
    """Read a chunk (an object, or an SSE event's JSON) into ``said``; False when no reader knows its
    shape. Chat and text completion chunks, the Responses API's events, Anthropic's and Gemini's."""
    choices = _field(chunk, "choices")
    if isinstance(choices, list):
        for choice in choices:
            _read_choice(choice, said)
        return True
    kind = _field(chunk, "type")
    if isinstance(kind, str) and kind.startswith("response."):
        return _read_responses_event(chunk, kind, said)
    if isinstance(kind, str):
        return _read_anthropic_event(chunk, kind, said)
    candidates = _field(chunk, "candidates")
    if isinstance(candidates, list):
        return all(_read_gemini_candidate(candidate, said) for candidate in candidates)
    # Gemini's last events may carry only its usage or the prompt's feedback.
    return (
        isinstance(chunk, Mapping)
        and bool(chunk)
        and chunk.keys() <= {"usageMetadata", "promptFeedback", "modelVersion", "responseId"}
    )


def _read_choice(choice: Any, said: _Assembled) -> None:
    index = _field(choice, "index")
    index = index if isinstance(index, int) else 0
    delta = _field(choice, "delta")
    if delta is None:
        text = _field(choice, "text")
        if text is not None:
            # A text completion (``/v1/completions``): each choice carries its text, not a delta.
            said.object = "text_completion"
            said.text(text, index)
        for name, value in _fields(choice):
            if name not in CHOICE_BOOKKEEPING:
                said.extra(name, value, index)
        return
    for name, value in _fields(delta):
        if value is None or name == "role":
            continue
        if name == "content":
            said.text(value, index)
        elif name == "tool_calls":
            for piece in value or []:
                function = _field(piece, "function")
                call = said.call(_field(piece, "index"), index)
                call.update(_field(piece, "id"), _field(function, "name"))
                call.add(_field(function, "arguments"))
        elif name == "function_call":
            function = said.function(index)
            function.update(name=_field(value, "name"))
            function.add(_field(value, "arguments"))
        elif name == "audio":
            # The sound itself is base64 no text guardrail reads; what it says is its transcript.
            said.extra("audio_transcript", _field(value, "transcript"), index)
        else:
            said.extra(name, value, index)


def _read_responses_event(event: Any, kind: str, said: _Assembled) -> bool:
    if kind == "response.output_text.delta":
        said.text(_field(event, "delta"))
    elif kind == "response.function_call_arguments.delta":
        said.call(_field(event, "output_index")).add(_field(event, "delta"))
    elif kind in ("response.output_item.added", "response.output_item.done"):
        item = _field(event, "item")
        item_type = _field(item, "type")
        if item_type == "function_call":
            said.call(_field(event, "output_index")).update(
                _field(item, "call_id"), _field(item, "name"), _field(item, "arguments")
            )
        elif kind == "response.output_item.done" and item_type not in STREAMED_ITEMS:
            # A tool's item (an MCP call's output, a search's results...) streams no deltas of its own.
            return False
    elif kind.endswith(".delta"):
        # Refusals, reasoning, a custom tool's input...: text the model streams, kept by its name.
        delta = _field(event, "delta")
        if not isinstance(delta, str):
            return False
        said.extra(kind.removeprefix("response.").removesuffix(".delta").replace(".", "_"), delta)
    elif not kind.endswith(RESPONSES_ANNOUNCEMENTS):
        return False
    return True


def _read_anthropic_event(event: Any, kind: str, said: _Assembled) -> bool:
    index = _field(event, "index")
    if kind == "content_block_start":
        block = _field(event, "content_block")
        block_type = _field(block, "type")
        if block_type == "text":
            said.text(_field(block, "text"))
        elif block_type == "tool_use":
            said.call(index).update(_field(block, "id"), _field(block, "name"))
            tool_input = _field(block, "input")
            if tool_input:
                said.call(index).add(orjson.dumps(tool_input).decode())
        elif block_type == "thinking":
            said.extra("thinking", _field(block, "thinking"))
        else:
            return bool(block_type == "redacted_thinking")
        return True
    if kind == "content_block_delta":
        delta = _field(event, "delta")
        delta_type = _field(delta, "type")
        if delta_type == "text_delta":
            said.text(_field(delta, "text"))
        elif delta_type == "input_json_delta":
            said.call(index).add(_field(delta, "partial_json"))
        elif delta_type == "thinking_delta":
            said.extra("thinking", _field(delta, "thinking"))
        else:
            # A signature is not text; anything else (citations...) is kept whole.
            return bool(delta_type == "signature_delta")
        return True
    return kind in ANTHROPIC_PLAIN_EVENTS


def _read_gemini_candidate(candidate: Any, said: _Assembled) -> bool:
    """Gemini's ``streamGenerateContent``: each candidate's parts, text or a whole ``functionCall``."""
    index = _field(candidate, "index")
    index = index if isinstance(index, int) else 0
    content = _field(candidate, "content")
    parts = _field(content, "parts") if content is not None else []
    for part in parts if isinstance(parts, list) else []:
        text, call = _field(part, "text"), _field(part, "functionCall")
        if isinstance(text, str):
            if _field(part, "thought"):
                said.extra("thought", text, index)
            else:
                said.text(text, index)
        elif isinstance(call, Mapping):
            said.next_call(index).update(
                name=_field(call, "name"), arguments=orjson.dumps(call.get("args") or {}).decode()
            )
        else:
            said.keep(part)
    return True


class _SseEvents:
    """Reads an SSE stream as it passes (Anthropic's ``/v1/messages``, Gemini's, or any other route's
    raw events): each event's JSON goes to the same readers as an object chunk, one no reader knows
    (or that is not JSON) is kept whole, and a chunk that held ``message_stop`` is reported. Events
    may span chunks, so the unfinished tail is kept."""

    def __init__(self) -> None:
        self._tail = ""
        self.seen = False
        self.as_bytes = True

    def feed(self, chunk: bytes | str, said: _Assembled) -> bool:
        """Add ``chunk``'s events to ``said``; True when it ends the message (``message_stop``)."""
        self.seen = True
        self.as_bytes = isinstance(chunk, bytes)
        self._tail += chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        *complete, self._tail = self._tail.replace("\r\n", "\n").split("\n\n")
        stop = False
        for event in complete:
            for line in event.split("\n"):
                if line.startswith("data:"):
                    stop = self._data(line[5:].strip(), said) or stop
        return stop

    def finish(self, said: _Assembled) -> None:
        """The stream ended: an event it left unfinished is read (or kept) too."""
        for line in self._tail.replace("\r\n", "\n").split("\n"):
            if line.startswith("data:"):
                self._data(line[5:].strip(), said)
        self._tail = ""

    @staticmethod
    def _data(data: str, said: _Assembled) -> bool:
        if not data or data == "[DONE]":
            return False
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            said.keep(data)
            return False
        if not _read(payload, said):
            said.keep(payload)
        return isinstance(payload, dict) and payload.get("type") == "message_stop"


def _anthropic_error(exc: StreamRefused, *, as_bytes: bool) -> bytes | str:
    kind = "invalid_request_error" if exc.status_code == 400 else "api_error"
    error = {"type": "error", "error": {"type": kind, "message": exc.message}}
    event = f"event: error\ndata: {orjson.dumps(error).decode()}\n\n"
    return event.encode() if as_bytes else event
