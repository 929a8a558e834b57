"""Tests for the fake model server itself: the during_call tests and the benchmarks trust it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from tests.fake_llm import Settings, app

pytestmark = pytest.mark.asyncio

CHAT = {
    "model": "fake-model",
    "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app(Settings(reply="The answer")))) as c:
        yield c


def chunks(text: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_answers_a_chat_completion_and_keeps_what_it_received(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The answer"}
    received = await (await client.get("/_admin/requests")).json()
    assert received == {"served": 1, "requests": [CHAT]}


async def test_streams_the_reply_as_server_sent_events(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = chunks(await resp.text())
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "The answer"
    assert len(events) > 3, "the reply comes in several chunks"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_function_call_answers_with_a_legacy_function_call_streamed_or_not(
    client: TestClient[Any, Any],
) -> None:
    assert (await client.post("/_admin/config", json={"function_call": True})).status == 200
    body = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    (choice,) = body["choices"]
    assert choice["message"]["function_call"] == {"name": "lookup", "arguments": "The answer"}
    assert choice["finish_reason"] == "function_call"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = chunks(await resp.text())
    calls = [e["choices"][0]["delta"].get("function_call") or {} for e in events]
    assert calls[0]["name"] == "lookup"
    assert "".join(c.get("arguments", "") for c in calls) == "The answer"
    assert len(events) > 3 and events[-1]["choices"][0]["finish_reason"] == "function_call"


async def test_answers_a_text_completion_streamed_or_not(client: TestClient[Any, Any]) -> None:
    body = await (await client.post("/v1/completions", json={"model": "m", "prompt": "Hi"})).json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "The answer"
    resp = await client.post("/v1/completions", json={"model": "m", "prompt": "Hi", "stream": True})
    events = chunks(await resp.text())
    assert len(events) > 3 and "".join(e["choices"][0]["text"] for e in events) == "The answer"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_echo_answers_with_the_last_user_message(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/_admin/config", json={"echo": True})).status == 200
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hi"


async def test_bad_settings_are_refused_by_name_and_reset_forgets_requests(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/_admin/config", json={"delay_ms": -1})
    assert resp.status == 400
    assert "delay_ms" in (await resp.json())["error"]
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/_admin/reset")
    assert await (await client.get("/_admin/requests")).json() == {"served": 0, "requests": []}


async def test_answers_the_responses_api_streamed_or_not(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/responses", json={"model": "fake-model", "input": "Hi"})
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "response"
    assert body["output"][0]["content"][0] == {"type": "output_text", "text": "The answer", "annotations": []}
    resp = await client.post("/v1/responses", json={"model": "fake-model", "input": "Hi", "stream": True})
    events = [json.loads(line[6:]) for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "response.created"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "The answer"
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "The answer"
    requests = await (await client.get("/_admin/requests")).json()
    assert requests["served"] == 2


async def test_answers_the_responses_api_plain_and_streamed_echoing_the_input(client: TestClient[Any, Any]) -> None:
    await client.post("/_admin/config", json={"echo": True})
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Echo me"}]}]
    for value in ("Echo me", items):
        resp = await client.post("/v1/responses", json={"model": "m", "input": value})
        body = await resp.json()
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == "Echo me"
    resp = await client.post("/v1/responses", json={"model": "m", "input": "Echo me", "stream": True})
    data = [json.loads(line[6:]) for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert data[0]["type"] == "response.created"
    assert data[-1]["type"] == "response.completed"
    assert "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta") == "Echo me"
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
