"""The opt-in response check (``akto_hook.verdicts.response_check``) against the in-process fake Akto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from fastapi import HTTPException
from litellm.types.llms.openai import (
    FunctionCallArgumentsDeltaEvent,
    FunctionCallArgumentsDoneEvent,
    OutputItemAddedEvent,
    OutputItemDoneEvent,
    ResponseCompletedEvent,
)
from litellm.types.utils import (
    ChatCompletionDeltaToolCall,
    Delta,
    Function,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
    TextChoices,
    TextCompletionResponse,
)
from pydantic import BaseModel

from akto_hook import calls, metrics
from akto_hook.verdicts import masking
from akto_hook.verdicts.response_check import ResponseCheck, StreamRefused
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import HookSettings
from akto_ingest.record import Record
from tests.fake_akto import FakeAkto

from .conftest import akto_settings

DATA = {"litellm_call_id": "call-1", "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def completion(text: str) -> ModelResponse:
    return ModelResponse(choices=[{"index": 0, "message": {"role": "assistant", "content": text}}])


CLIENTS: list[AktoClient] = []


@pytest_asyncio.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while CLIENTS:
        await CLIENTS.pop().close()


def checker(akto: FakeAkto, blocked: list[Record], **settings: Any) -> ResponseCheck:
    hook = HookSettings.load({"check_response": True, **settings}, env={})

    async def record(record: Record, key: object) -> None:
        blocked.append(record)

    settings_ = akto_settings(akto.url)
    CLIENTS.append(AktoClient(settings_, timeout=2))
    return ResponseCheck(CLIENTS[-1], settings_, hook, record, masking.MaskedCalls())


async def stream_of(*texts: str) -> AsyncIterator[Any]:
    for text in texts:
        yield ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content=text))])


async def drain(chunks: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]


async def test_a_clean_response_passes_unchanged(fake_akto: FakeAkto) -> None:
    blocked: list[Record] = []
    response = completion("All fine")
    assert await checker(fake_akto, blocked).checked(dict(DATA), response) is response
    assert response.choices[0].message.content == "All fine"
    (check,) = fake_akto.records
    assert check.query.get("response_guardrails") == "true" and "guardrails" not in check.query
    assert not check.ingested and blocked == []


async def test_a_blocked_response_raises_400_and_writes_the_blocked_record(fake_akto: FakeAkto) -> None:
    blocked: list[Record] = []
    with pytest.raises(HTTPException) as raised:
        await checker(fake_akto, blocked).checked(dict(DATA), completion("my ssn is 1"))
    assert (raised.value.status_code, raised.value.detail) == (400, "PII detected")
    (record,) = blocked
    assert record.status_code == 400 and record.blocked_reason == "PII detected"
    assert record.metadata["blocked_on"] == "response"


async def test_a_request_value_the_view_cannot_read_does_not_stop_the_response_check(fake_akto: FakeAkto) -> None:
    # The request check gave such a request the fallback (fail_open passed it); the response is still
    # checked, and a block still writes its record, naming the value it could not read.
    data = {**DATA, "odd": object()}
    blocked: list[Record] = []
    clean = completion("All fine")
    assert await checker(fake_akto, blocked).checked(dict(data), clean) is clean
    with pytest.raises(HTTPException) as raised:
        await checker(fake_akto, blocked).checked(dict(data), completion("my ssn is 1"))
    assert raised.value.status_code == 400
    (record,) = blocked
    assert record.request_body["odd"] == {"unreadable": "object"}


@pytest.mark.parametrize(("fallback", "passes"), [("fail_open", True), ("fail_closed", False)])
async def test_no_verdict_goes_to_unreachable_fallback(fake_akto: FakeAkto, fallback: str, passes: bool) -> None:
    fake_akto.configure(status=503)
    check = checker(fake_akto, [], unreachable_fallback=fallback)
    response = completion("my ssn is 1")
    if passes:
        assert await check.checked(dict(DATA), response) is response
        assert await drain(check.stream(stream_of("a", "b"), dict(DATA)))
        return
    with pytest.raises(HTTPException) as raised:
        await check.checked(dict(DATA), response)
    assert raised.value.status_code == 503
    with pytest.raises(StreamRefused) as refused:
        await drain(check.stream(stream_of("a", "b"), dict(DATA)))
    assert refused.value.status_code == 503


async def test_a_stream_passes_as_it_comes_and_is_checked_once_assembled(fake_akto: FakeAkto) -> None:
    blocked: list[Record] = []
    check = checker(fake_akto, blocked)
    seen: list[Any] = []
    with pytest.raises(StreamRefused) as refused:
        async for chunk in check.stream(stream_of("my s", "sn is", " 1"), dict(DATA)):
            seen.append(chunk)
    assert len(seen) == 3, "every chunk went out before the check"
    assert (refused.value.message, refused.value.status_code, refused.value.type) == (
        "PII detected",
        400,
        "invalid_request_error",
    )
    (check_record,) = fake_akto.records
    assert "my ssn is 1" in check_record.body["responsePayload"]
    assert blocked[0].blocked_reason == "PII detected"


async def test_a_masked_stream_is_refused(fake_akto: FakeAkto) -> None:
    fake_akto.configure(masks={"secret": "[X]"})
    blocked: list[Record] = []
    with pytest.raises(StreamRefused, match="cannot be masked once it was sent"):
        await drain(checker(fake_akto, blocked).stream(stream_of("a secret"), dict(DATA)))
    assert len(blocked) == 1


async def test_a_masked_response_is_masked_in_place(fake_akto: FakeAkto) -> None:
    fake_akto.configure(masks={"secret": "[X]"})
    response = completion("a secret here")
    assert await checker(fake_akto, []).checked(dict(DATA), response) is response
    assert response.choices[0].message.content == "a [X] here"


async def test_a_blocked_response_keeps_akto_policy_rule_and_severity(fake_akto: FakeAkto) -> None:
    fake_akto.configure(metadata={"policy_name": "PII Shield", "rule_violated": "ssn", "severity": "HIGH"})
    blocked: list[Record] = []
    before = metrics.VIOLATIONS.labels("blocked", "high", "PII Shield")._value.get()
    with pytest.raises(HTTPException):
        await checker(fake_akto, blocked).checked(dict(DATA), completion("my ssn is 1"))
    (record,) = blocked
    assert (record.blocked_policy, record.blocked_rule, record.blocked_severity) == ("PII Shield", "ssn", "high")
    assert metrics.VIOLATIONS.labels("blocked", "high", "PII Shield")._value.get() == before + 1


def sse_event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def anthropic_events(*texts: str) -> list[bytes]:
    """An Anthropic ``/v1/messages`` stream as LiteLLM passes it on: SSE bytes, one event a chunk."""
    return [
        sse_event("message_start", message={"id": "m1", "role": "assistant", "content": []}),
        sse_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(sse_event("content_block_delta", index=0, delta={"type": "text_delta", "text": text}) for text in texts),
        sse_event("content_block_stop", index=0),
        sse_event("message_delta", delta={"stop_reason": "end_turn"}),
        sse_event("message_stop"),
    ]


async def chunks_of(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def test_an_anthropic_stream_ends_with_an_error_event_instead_of_message_stop(fake_akto: FakeAkto) -> None:
    blocked: list[Record] = []
    events = anthropic_events("my s", "sn is", " 1")
    seen = await drain(checker(fake_akto, blocked).stream(chunks_of(events), dict(DATA)))
    assert seen[:-1] == events[:-1], "every event but message_stop went out as it came"
    assert seen[-1].startswith(b"event: error\n")
    error = json.loads(seen[-1].decode().split("data: ", 1)[1])
    assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": "PII detected"}}
    (check_record,) = fake_akto.records
    assert "my ssn is 1" in check_record.body["responsePayload"]
    assert blocked[0].blocked_reason == "PII detected"

    clean = anthropic_events("All ", "fine")
    assert await drain(checker(fake_akto, []).stream(chunks_of(clean), dict(DATA))) == clean


async def test_a_flagged_response_passes_and_is_counted_and_logged_with_its_policy(
    fake_akto: FakeAkto, caplog: pytest.LogCaptureFixture
) -> None:
    fake_akto.configure(
        behaviour="alert", metadata={"policy_name": "Secrets Watch", "rule_violated": "key", "severity": "MEDIUM"}
    )
    blocked: list[Record] = []
    before = metrics.VIOLATIONS.labels("flagged", "medium", "Secrets Watch")._value.get()
    response = completion("my ssn is 1")
    assert await checker(fake_akto, blocked).checked(dict(DATA), response) is response
    assert blocked == []
    assert metrics.VIOLATIONS.labels("flagged", "medium", "Secrets Watch")._value.get() == before + 1
    (line,) = [r.getMessage() for r in caplog.records if "flagged the response" in r.getMessage()]
    assert "policy='Secrets Watch'" in line and "rule='key'" in line and "severity=medium" in line


def sent_messages(record: Any) -> list[dict[str, Any]]:
    """The messages of the response Akto was asked about: content and tool calls, by choice."""
    choices = json.loads(record.body["responsePayload"])["choices"]
    return [{"content": c["message"]["content"], "tool_calls": c["message"].get("tool_calls")} for c in choices]


def lookup_call(arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}


def chat_tool_call_chunks(*pieces: str) -> list[ModelResponseStream]:
    """A chat completion stream of one tool call: its id and name first, then its arguments in pieces."""
    calls = [ChatCompletionDeltaToolCall(index=0, id="call_1", function=Function(name="lookup", arguments=""))]
    calls += [ChatCompletionDeltaToolCall(index=0, function=Function(arguments=piece)) for piece in pieces]
    return [ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(tool_calls=[call]))]) for call in calls]


async def test_a_chat_stream_of_tool_calls_is_checked_as_the_same_response_unstreamed(fake_akto: FakeAkto) -> None:
    blocked: list[Record] = []
    chunks = chat_tool_call_chunks('{"q": "my s', 'sn is 1"}')
    seen: list[Any] = []
    with pytest.raises(StreamRefused) as refused:
        async for chunk in checker(fake_akto, blocked).stream(chunks_of(chunks), dict(DATA)):
            seen.append(chunk)
    assert seen == chunks and (refused.value.message, refused.value.status_code) == ("PII detected", 400)
    assert blocked[0].blocked_reason == "PII detected"

    clean = chat_tool_call_chunks('{"q": ', '"weather"}')
    assert await drain(checker(fake_akto, []).stream(chunks_of(clean), dict(DATA))) == clean
    unstreamed = ModelResponse(
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [lookup_call('{"q": "weather"}')]},
            }
        ]
    )
    await checker(fake_akto, []).checked(dict(DATA), unstreamed)
    refused_check, streamed, plain = fake_akto.records
    assert sent_messages(refused_check) == [{"content": None, "tool_calls": [lookup_call('{"q": "my ssn is 1"}')]}]
    assert sent_messages(streamed) == sent_messages(plain)


def responses_tool_call_events(*pieces: str) -> list[Any]:
    """A Responses API stream of one function call, as LiteLLM passes its events on."""
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup", "arguments": ""}
    done = {**item, "arguments": "".join(pieces), "status": "completed"}
    item["status"] = "in_progress"
    response = {"id": "resp_1", "created_at": 0, "status": "completed", "model": "gpt-4o", "output": [done]}
    at: dict[str, Any] = {"item_id": "fc_1", "output_index": 0}
    delta = "response.function_call_arguments.delta"
    events: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (OutputItemAddedEvent, {"type": "response.output_item.added", "output_index": 0, "item": item}),
        *((FunctionCallArgumentsDeltaEvent, {"type": delta, **at, "delta": piece}) for piece in pieces),
        (
            FunctionCallArgumentsDoneEvent,
            {"type": "response.function_call_arguments.done", **at, "arguments": "".join(pieces)},
        ),
        (OutputItemDoneEvent, {"type": "response.output_item.done", "output_index": 0, "item": done}),
        (ResponseCompletedEvent, {"type": "response.completed", "response": response}),
    ]
    return [event.model_validate(data) for event, data in events]


async def test_a_responses_stream_of_function_calls_is_checked_and_a_block_holds_back_completed(
    fake_akto: FakeAkto,
) -> None:
    blocked: list[Record] = []
    events = responses_tool_call_events('{"q": "my s', 'sn is 1"}')
    seen: list[Any] = []
    with pytest.raises(StreamRefused) as refused:
        async for chunk in checker(fake_akto, blocked).stream(chunks_of(events), dict(DATA)):
            seen.append(chunk)
    assert seen == events[:-1], "every event but response.completed went out as it came"
    assert refused.value.message == "PII detected" and blocked[0].blocked_reason == "PII detected"
    (check,) = fake_akto.records
    # The deltas and the done item state the same arguments: they are sent once.
    assert sent_messages(check) == [{"content": None, "tool_calls": [lookup_call('{"q": "my ssn is 1"}')]}]

    clean = responses_tool_call_events('{"q": ', '"weather"}')
    assert await drain(checker(fake_akto, []).stream(chunks_of(clean), dict(DATA))) == clean
    assert sent_messages(fake_akto.records[-1])[0]["tool_calls"] == [lookup_call('{"q": "weather"}')]


def anthropic_tool_use_events(*pieces: str) -> list[bytes]:
    """An Anthropic ``/v1/messages`` stream of a text block and then a ``tool_use`` block."""
    tool = {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {}}
    return [
        sse_event("message_start", message={"id": "m1", "role": "assistant", "content": []}),
        sse_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Looking it up."}),
        sse_event("content_block_stop", index=0),
        sse_event("content_block_start", index=1, content_block=tool),
        *(
            sse_event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": piece})
            for piece in pieces
        ),
        sse_event("content_block_stop", index=1),
        sse_event("message_delta", delta={"stop_reason": "tool_use"}),
        sse_event("message_stop"),
    ]


async def test_an_anthropic_stream_of_tool_use_is_checked_and_a_block_ends_it_with_an_error_event(
    fake_akto: FakeAkto,
) -> None:
    blocked: list[Record] = []
    events = anthropic_tool_use_events('{"q": "my s', 'sn is 1"}')
    seen = await drain(checker(fake_akto, blocked).stream(chunks_of(events), dict(DATA)))
    assert seen[:-1] == events[:-1], "every event but message_stop went out as it came"
    assert seen[-1].startswith(b"event: error\n") and blocked[0].blocked_reason == "PII detected"
    (check,) = fake_akto.records
    assert sent_messages(check) == [{"content": "Looking it up.", "tool_calls": [lookup_call('{"q": "my ssn is 1"}')]}]

    clean = anthropic_tool_use_events('{"q": ', '"weather"}')
    assert await drain(checker(fake_akto, []).stream(chunks_of(clean), dict(DATA))) == clean
    assert sent_messages(fake_akto.records[-1])[0]["tool_calls"] == [lookup_call('{"q": "weather"}')]


@pytest.mark.parametrize(("akto", "status"), [({"status": 503}, 503), ({"masks": {"weather": "[X]"}}, 400)])
async def test_a_tool_call_stream_with_no_verdict_or_a_mask_is_refused_as_a_text_stream_is(
    fake_akto: FakeAkto, akto: dict[str, Any], status: int
) -> None:
    fake_akto.configure(**akto)
    check = checker(fake_akto, [], unreachable_fallback="fail_closed")
    with pytest.raises(StreamRefused) as refused:
        await drain(check.stream(chunks_of(chat_tool_call_chunks('{"q": "weather"}')), dict(DATA)))
    assert refused.value.status_code == status


async def test_a_stream_with_no_text_and_no_tool_calls_is_not_checked(fake_akto: FakeAkto) -> None:
    empty = [ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content=None))])]
    assert await drain(checker(fake_akto, []).stream(chunks_of(empty), dict(DATA))) == empty
    assert fake_akto.records == []


def checked_body(akto: FakeAkto) -> dict[str, Any]:
    """The response the last check asked Akto about."""
    return dict(json.loads(akto.records[-1].body["responsePayload"]))


async def refused_stream(akto: FakeAkto, chunks: list[Any]) -> tuple[list[Any], StreamRefused, list[Record]]:
    """Run ``chunks`` through a response check that refuses them; what went out, why, and the record."""
    blocked: list[Record] = []
    seen: list[Any] = []
    with pytest.raises(StreamRefused) as refused:
        async for chunk in checker(akto, blocked).stream(chunks_of(chunks), dict(DATA)):
            seen.append(chunk)
    return seen, refused.value, blocked


def text_completion_chunks(*texts: str) -> list[TextCompletionResponse]:
    """A ``/v1/completions`` stream as LiteLLM's TextCompletionStreamWrapper passes it on."""
    chunks = []
    for text in texts:
        chunk = TextCompletionResponse()
        chunk["object"] = "text_completion"
        chunk["choices"] = [TextChoices(text=text, index=0)]
        chunks.append(chunk)
    return chunks


async def test_a_text_completion_stream_is_checked_as_a_text_completion(fake_akto: FakeAkto) -> None:
    chunks = text_completion_chunks("my s", "sn is", " 1")
    seen, refused, blocked = await refused_stream(fake_akto, chunks)
    assert seen == chunks and (refused.message, refused.status_code) == ("PII detected", 400)
    assert blocked[0].blocked_reason == "PII detected"
    body = checked_body(fake_akto)
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "my ssn is 1"}]

    clean = text_completion_chunks("All ", "fine")
    assert await drain(checker(fake_akto, []).stream(chunks_of(clean), dict(DATA))) == clean
    assert checked_body(fake_akto)["choices"] == [{"index": 0, "text": "All fine"}]


def function_call_chunks(*pieces: str) -> list[ModelResponseStream]:
    """A chat stream of a legacy ``function_call`` (the ``functions`` parameter): name, then arguments."""
    calls = [{"name": "lookup", "arguments": ""}, *({"arguments": piece} for piece in pieces)]
    return [ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(function_call=c))]) for c in calls]


async def test_a_legacy_function_call_stream_is_checked_as_the_same_response_unstreamed(fake_akto: FakeAkto) -> None:
    chunks = function_call_chunks('{"q": "my s', 'sn is 1"}')
    seen, refused, _ = await refused_stream(fake_akto, chunks)
    assert seen == chunks and refused.message == "PII detected"
    (choice,) = checked_body(fake_akto)["choices"]
    assert choice["message"]["function_call"] == {"name": "lookup", "arguments": '{"q": "my ssn is 1"}'}


async def test_other_delta_fields_are_checked_by_their_names(fake_akto: FakeAkto) -> None:
    chunks = [
        ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(reasoning_content=piece))])
        for piece in ("my s", "sn is 1")
    ]
    chunks.append(ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content="Sorry, no."))]))
    await refused_stream(fake_akto, chunks)
    (choice,) = checked_body(fake_akto)["choices"]
    assert choice["message"]["content"] == "Sorry, no."
    assert choice["message"]["reasoning_content"] == "my ssn is 1"


@pytest.mark.parametrize(
    "chunk",
    [
        {"output": "my ssn is 1"},
        ModelResponse(choices=[{"index": 0, "message": {"role": "assistant", "content": "x"}}]).choices[0],
        ["my ssn is 1"],
    ],
    ids=["dict", "object", "list"],
)
async def test_a_chunk_no_reader_knows_is_checked_whole(fake_akto: FakeAkto, chunk: Any) -> None:
    if not isinstance(chunk, dict | list):
        chunk.message.content = "my ssn is 1"
    hello = ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content="Hello. "))])
    seen, refused, _ = await refused_stream(fake_akto, [hello, chunk])
    assert seen[-1] is chunk and refused.message == "PII detected"
    body = checked_body(fake_akto)
    assert "my ssn is 1" in json.dumps(body["unread_chunks"])


def responses_event(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, **data}


async def test_responses_events_no_reader_knows_are_checked_whole(fake_akto: FakeAkto) -> None:
    mcp_item = {"type": "mcp_call", "id": "mcp_1", "name": "lookup", "output": "my ssn is 1"}
    events = [
        responses_event("response.created", response={"id": "r1"}),
        responses_event("response.refusal.delta", output_index=0, delta="I cannot"),
        responses_event("response.output_item.done", output_index=1, item=mcp_item),
    ]
    await refused_stream(fake_akto, events)
    body = checked_body(fake_akto)
    assert body["choices"][0]["message"]["refusal"] == "I cannot"
    assert body["unread_chunks"] == [events[2]]


async def test_anthropic_thinking_is_read_and_unknown_deltas_are_kept_whole(fake_akto: FakeAkto) -> None:
    events = [
        sse_event("message_start", message={"id": "m1", "role": "assistant", "content": []}),
        sse_event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        sse_event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "my ssn is 1"}),
        sse_event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "c2ln"}),
        sse_event("content_block_stop", index=0),
        sse_event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
        sse_event("content_block_delta", index=1, delta={"type": "citations_delta", "citation": {"cited_text": "Q"}}),
        sse_event("message_stop"),
    ]
    seen = await drain(checker(fake_akto, []).stream(chunks_of(events), dict(DATA)))
    assert seen[-1].startswith(b"event: error\n")
    body = checked_body(fake_akto)
    assert body["choices"][0]["message"]["thinking"] == "my ssn is 1"
    assert [c["delta"]["type"] for c in body["unread_chunks"]] == ["citations_delta"]


def gemini_events(*texts: str) -> list[bytes]:
    """Gemini's ``streamGenerateContent?alt=sse`` as LiteLLM passes it on: raw SSE bytes."""
    events: list[dict[str, Any]] = [
        {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": text}]}}]} for text in texts
    ]
    events.append({"candidates": [{"index": 0, "content": {"role": "model", "parts": []}, "finishReason": "STOP"}]})
    events.append({"usageMetadata": {"totalTokenCount": 3}, "modelVersion": "gemini"})
    return [f"data: {json.dumps(event)}\r\n\r\n".encode() for event in events]


async def test_a_gemini_stream_is_read_and_checked(fake_akto: FakeAkto) -> None:
    events = gemini_events("my s", "sn is", " 1")
    seen = await drain(checker(fake_akto, []).stream(chunks_of(events), dict(DATA)))
    assert seen[:-1] == events and seen[-1].startswith(b"event: error\n")
    body = checked_body(fake_akto)
    assert body["choices"][0]["message"]["content"] == "my ssn is 1"
    assert "unread_chunks" not in body


@pytest.mark.parametrize(
    "events",
    [
        [b"data: not json: my ssn is 1\n\n"],
        [b'data: {"result": "my ssn is 1"}\n\n'],
        # The stream ended inside an event: what it sent is checked all the same.
        [b'data: {"result": "my s', b'sn is 1"}'],
    ],
    ids=["not_json", "unknown_json", "unfinished"],
)
async def test_an_sse_stream_no_reader_knows_is_checked_as_its_raw_events(
    fake_akto: FakeAkto, events: list[bytes]
) -> None:
    blocked: list[Record] = []
    seen = await drain(checker(fake_akto, blocked).stream(chunks_of(events), dict(DATA)))
    assert seen[: len(events)] == events and seen[-1].startswith(b"event: error\n")
    assert "my ssn is 1" in json.dumps(checked_body(fake_akto)["unread_chunks"])
    assert blocked[0].blocked_reason == "PII detected"


async def test_a_success_logged_while_a_stream_is_checked_waits_for_the_check(fake_akto: FakeAkto) -> None:
    # On /v1/completions LiteLLM logs a stream's success as soon as it ends, before the check is done.
    fake_akto.configure(delay_ms=300)
    blocked: list[Record] = []
    check = checker(fake_akto, blocked)

    async def consume() -> None:
        with pytest.raises(StreamRefused):
            await drain(check.stream(stream_of("my ssn", " is 1"), dict(DATA)))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    assert not task.done() and blocked == [], "the check is in flight"
    await asyncio.wait_for(check.settled(calls.key_of(DATA)), 2)
    assert [r.blocked_reason for r in blocked] == ["PII detected"], "the refusal is known once settled returns"
    await task
    await check.settled(calls.key_of(DATA))  # nothing in flight: returns at once
