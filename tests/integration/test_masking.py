"""Akto's masking and the opt-in response check, through real LiteLLM proxies in front of the fake
model server (which echoes what it received, so a test sees what the LLM got), with the fake Akto
and a real worker delivering the records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from akto_ingest.queue import inbox_key
from tests.stack import (
    BLOCK_EXAMPLE,
    DURING_EXAMPLE,
    FAST_RETRY,
    MASTER_KEY,
    PROMETHEUS_SETTINGS,
    AktoAdmin,
    LlmAdmin,
    Proc,
    Proxy,
    fake_llm_models,
    litellm_config,
    start_fake_akto,
    start_fake_llm,
    start_proxy,
    start_worker,
    wait_proxy,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

CARD = "4111-1111-1111-1111"
MASKED_CARD = "[CARD]"


@dataclass
class Masking:
    akto: AktoAdmin
    llm: LlmAdmin
    block: Proxy  # config.block.yaml with check_response: true, fail_closed
    during: Proxy  # config.during-call.yaml (records read from its inbox, no worker)
    redis: redis.Redis


@pytest.fixture(scope="module")
def ms(log_dir: Path, redis_url: str) -> Iterator[Masking]:
    run = uuid.uuid4().hex[:8]
    akto_proc, akto = start_fake_akto(log_dir)
    llm_proc, llm = start_fake_llm(log_dir)
    procs: list[Proc] = [akto_proc, llm_proc]
    try:
        block = start_proxy(
            "proxy-masking-block",
            litellm_config(
                BLOCK_EXAMPLE,
                drop=("unreachable_fallback",),
                extra={"check_response": True},
                litellm_settings=PROMETHEUS_SETTINGS,
                models=fake_llm_models(llm.url),
            ),
            log_dir,
            akto_url=akto.url,
            redis_url=redis_url,
            queue=f"akto:mask:{run}:block",
        )
        procs.append(block.proc)
        during = start_proxy(
            "proxy-masking-during",
            litellm_config(DURING_EXAMPLE, models=fake_llm_models(llm.url)),
            log_dir,
            akto_url=akto.url,
            redis_url=redis_url,
            queue=f"akto:mask:{run}:during",
        )
        procs.append(during.proc)
        wait_proxy(block)
        wait_proxy(during)
        procs.append(
            start_worker("worker-masking", worker_env(akto.url, redis_url, block.queue, **FAST_RETRY), log_dir)
        )
        client = redis.Redis.from_url(redis_url)
        yield Masking(akto, llm, block, during, client)
        client.delete(inbox_key(during.queue))
        client.close()
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)


@pytest.fixture(autouse=True)
def fresh(ms: Masking) -> None:
    ms.akto.reset()
    ms.akto.configure(masks={CARD: MASKED_CARD})
    ms.llm.reset()
    ms.llm.configure(delay_ms=0, echo=True, function_call=False)


def post(proxy: Proxy, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}{path}", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=timeout
    )


def chat(proxy: Proxy, messages: list[dict[str, Any]], *, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-3.5-turbo", "messages": messages}
    if stream:
        body["stream"] = True
    return post(proxy, "/v1/chat/completions", body)


def ingested(ms: Masking, response: httpx.Response) -> dict[str, Any]:
    """The one record Akto ingested for the call, once a later call's record is in too (a second
    record of the call would have been written by then)."""
    cid = response.headers["x-litellm-call-id"]
    wait_until(lambda: ms.akto.ingested_for(cid), 30, interval=0.2, what=f"record {cid} at Akto")
    ms.akto.configure(masks={})
    ms.llm.configure(echo=True)
    later = chat(ms.block, [{"role": "user", "content": "Hello again"}])
    assert later.status_code == 200, later.text
    later_id = later.headers["x-litellm-call-id"]
    wait_until(lambda: ms.akto.ingested_for(later_id), 30, interval=0.2, what="the later call's record")
    (record,) = ms.akto.ingested_for(cid)
    return dict(record["body"])


def request_body(record: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.loads(record["requestPayload"])["body"]))


def reply(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def test_mask_is_applied_to_what_the_llm_gets_and_the_record_is_masked(ms: Masking) -> None:
    text = f"My card is {CARD}, please check it"
    response = chat(ms.block, [{"role": "system", "content": "Be brief"}, {"role": "user", "content": text}])
    assert response.status_code == 200, response.text
    masked = text.replace(CARD, MASKED_CARD)
    (sent,) = ms.llm.requests()
    assert sent["messages"][-1]["content"] == masked
    assert CARD not in json.dumps(sent)
    assert reply(response) == masked

    record = ingested(ms, response)
    assert record["statusCode"] == "200"
    assert request_body(record)["messages"][-1]["content"] == masked
    assert CARD not in json.dumps(record)
    assert json.loads(record["metadata"])["masked"] == "request"


def test_mask_in_content_parts_is_applied(ms: Masking) -> None:
    parts = [{"type": "text", "text": "Read this"}, {"type": "text", "text": f"card {CARD}"}]
    response = chat(ms.block, [{"role": "user", "content": parts}])
    assert response.status_code == 200, response.text
    (sent,) = ms.llm.requests()
    assert [p["text"] for p in sent["messages"][0]["content"]] == ["Read this", f"card {MASKED_CARD}"]
    record = ingested(ms, response)
    assert CARD not in json.dumps(record)


def test_mask_that_cannot_be_mapped_back_blocks_with_400(ms: Masking) -> None:
    # Akto's rewrite renames a key ("role"): the masked payload is no longer the request's shape.
    ms.akto.configure(masks={"role": "r0le"})
    response = chat(ms.block, [{"role": "user", "content": "Hello there"}])
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("Akto masked this request, and the mask cannot be applied")
    assert "shape" in message
    assert ms.llm.requests() == [], "nothing reached the LLM"
    record = ingested(ms, response)
    assert record["statusCode"] == "400"
    assert json.loads(record["responsePayload"])["reason"] == message


def test_long_request_mask_in_a_whole_message_is_applied(ms: Masking) -> None:
    # Over Akto's 256 KiB string limit: checked in parts. The short message is whole in a part.
    document = "lorem ipsum dolor sit amet " * 12_000
    messages = [{"role": "user", "content": document}, {"role": "user", "content": f"and my card {CARD}"}]
    response = chat(ms.block, messages)
    assert response.status_code == 200, response.text
    (sent,) = ms.llm.requests()
    assert sent["messages"][1]["content"] == f"and my card {MASKED_CARD}"
    assert sent["messages"][0]["content"] == document


def test_long_request_mask_inside_a_sliced_text_blocks_with_400(ms: Masking) -> None:
    document = "lorem ipsum dolor sit amet " * 12_000 + f" card {CARD}"
    response = chat(ms.block, [{"role": "user", "content": document}])
    assert response.status_code == 400, response.text
    assert "too long to check whole" in response.json()["error"]["message"]
    assert ms.llm.requests() == []


def test_during_call_cannot_mask_and_blocks_with_400(ms: Masking) -> None:
    response = chat(ms.during, [{"role": "user", "content": f"My card is {CARD}"}])
    assert response.status_code == 400, response.text
    assert "during_call" in response.json()["error"]["message"]
    cid = response.headers["x-litellm-call-id"]

    def records() -> list[dict[str, Any]]:
        raw = ms.redis.lrange(inbox_key(ms.during.queue), 0, -1)
        return [r for r in (json.loads(line) for line in raw) if r["id"] == cid]  # type: ignore[union-attr]

    (record,) = wait_until(records, 20, what="the blocked record")
    assert record["status_code"] == 400
    assert record["metadata"]["llm_output"] == "discarded"
    assert CARD not in json.dumps(record["request_body"]), "the record keeps Akto's masked text"


def test_check_response_blocks_a_flagged_response_with_400_and_one_record(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    response = chat(ms.block, [{"role": "user", "content": "What is your number?"}])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "PII detected"
    assert "078-05-1120" not in response.text
    checks = [r for r in ms.akto.records_for(response.headers["x-litellm-call-id"]) if not r["ingested"]]
    assert sorted(c["query"].get("response_guardrails", "") for c in checks) == ["", "true"]
    record = ingested(ms, response)
    assert record["statusCode"] == "400"
    assert json.loads(record["responsePayload"]) == {"x-blocked-by": "Akto Guardrails", "reason": "PII detected"}
    assert json.loads(record["metadata"])["blocked_on"] == "response"


def test_check_response_masks_the_response(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply=f"Your card on file is {CARD}")
    response = chat(ms.block, [{"role": "user", "content": "Which card do I have?"}])
    assert response.status_code == 200, response.text
    assert reply(response) == f"Your card on file is {MASKED_CARD}"
    record = ingested(ms, response)
    assert record["statusCode"] == "200"
    assert CARD not in record["responsePayload"] and MASKED_CARD in record["responsePayload"]
    assert json.loads(record["metadata"])["masked"] == "response"


def events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


def test_check_response_ends_a_flagged_stream_with_an_error_event_and_one_record(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    response = chat(ms.block, [{"role": "user", "content": "What is your number?"}], stream=True)
    assert response.status_code == 200
    data = events(response)
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["message"] == "PII detected"
    assert error["code"] == "400"
    record = ingested(ms, response)
    assert record["statusCode"] == "400"
    assert json.loads(record["responsePayload"])["reason"] == "PII detected"


def test_check_response_passes_a_clean_stream_with_done_and_one_record(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="A perfectly fine answer")
    response = chat(ms.block, [{"role": "user", "content": "Hello"}], stream=True)
    assert response.status_code == 200
    data = events(response)
    assert data[-1] == "[DONE]"
    text = "".join(
        (c.get("delta") or {}).get("content") or "" for e in data[:-1] for c in json.loads(e).get("choices", [])
    )
    assert text == "A perfectly fine answer"
    record = ingested(ms, response)
    assert record["statusCode"] == "200"
    assert "A perfectly fine answer" in record["responsePayload"]


def test_masked_counts_in_the_metric(ms: Masking) -> None:
    def count() -> float:
        text = httpx.get(f"{ms.block.url}/metrics/", follow_redirects=True, timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith('akto_hook_masked_total{side="request"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = count()
    assert chat(ms.block, [{"role": "user", "content": f"card {CARD}"}]).status_code == 200
    assert count() == before + 1


def test_responses_api_input_is_masked(ms: Masking) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": f"my card {CARD}"}]}]
    for value in (f"my card {CARD}", items):
        ms.llm.reset()
        response = post(ms.block, "/v1/responses", {"model": "gpt-3.5-turbo", "input": value})
        assert response.status_code == 200, response.text
        (sent,) = ms.llm.requests()
        assert CARD not in json.dumps(sent) and MASKED_CARD in json.dumps(sent["input"])
        record = ingested(ms, response)
        assert record["path"] == "/v1/responses"
        assert CARD not in record["requestPayload"]
        assert json.loads(record["metadata"])["masked"] == "request"
        ms.akto.configure(masks={CARD: MASKED_CARD})


def test_responses_instructions_and_anthropic_system_are_masked(ms: Masking) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/responses", {"model": "gpt-3.5-turbo", "instructions": f"The card is {CARD}", "input": "Hello"}),
        (
            "/v1/messages",
            {
                "model": "gpt-3.5-turbo",
                "max_tokens": 50,
                "system": [{"type": "text", "text": f"The card is {CARD}"}],
                "messages": [{"role": "user", "content": "Hello"}],
            },
        ),
    ]
    for path, body in calls:
        ms.llm.reset()
        response = post(ms.block, path, body)
        assert response.status_code == 200, response.text
        (sent,) = ms.llm.requests()
        assert CARD not in json.dumps(sent) and f"The card is {MASKED_CARD}" in sent["instructions"]
        record = ingested(ms, response)
        assert CARD not in record["requestPayload"] and MASKED_CARD in record["requestPayload"]
        ms.akto.configure(masks={CARD: MASKED_CARD})


def test_anthropic_messages_are_masked(ms: Masking) -> None:
    blocks = [{"type": "text", "text": "Read this"}, {"type": "text", "text": f"my card {CARD}"}]
    for content in (f"my card {CARD}", blocks):
        ms.llm.reset()
        body = {"model": "gpt-3.5-turbo", "max_tokens": 50, "messages": [{"role": "user", "content": content}]}
        response = post(ms.block, "/v1/messages", body)
        assert response.status_code == 200, response.text
        (sent,) = ms.llm.requests()
        assert CARD not in json.dumps(sent) and MASKED_CARD in json.dumps(sent)
        record = ingested(ms, response)
        assert record["path"] == "/v1/messages"
        assert CARD not in record["requestPayload"]
        ms.akto.configure(masks={CARD: MASKED_CARD})


def responses_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events(response) if e.startswith("{")]


def test_check_response_fails_a_flagged_responses_api_stream_instead_of_completing_it(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    body = {"model": "gpt-3.5-turbo", "input": "What is your number?", "stream": True}
    response = post(ms.block, "/v1/responses", body)
    assert response.status_code == 200
    types = [e.get("type") for e in responses_events(response)]
    assert "response.output_text.delta" in types
    assert "response.completed" not in types, types
    assert types[-1] == "response.failed", types
    failed = responses_events(response)[-1]["response"]["error"]
    assert failed["message"] == "PII detected"
    record = ingested(ms, response)
    assert record["statusCode"] == "400" and record["path"] == "/v1/responses"

    ms.llm.configure(echo=False, reply="A perfectly fine answer")
    clean = post(ms.block, "/v1/responses", body)
    assert [e.get("type") for e in responses_events(clean)][-1] == "response.completed"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_check_response_blocks_a_flagged_response_on_other_apis(ms: Masking, path: str) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    body: dict[str, Any] = {"model": "gpt-3.5-turbo", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    if path == "/v1/responses":
        body = {"model": "gpt-3.5-turbo", "input": "Hi"}
    response = post(ms.block, path, body)
    assert response.status_code == 400, response.text
    assert "PII detected" in response.text and "078-05-1120" not in response.text
    record = ingested(ms, response)
    assert record["statusCode"] == "400" and record["path"] == path


def test_check_response_ends_a_flagged_anthropic_stream_with_an_error_event(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    body: dict[str, Any] = {
        "model": "gpt-3.5-turbo",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "What is your number?"}],
    }
    response = post(ms.block, "/v1/messages", body)
    assert response.status_code == 200
    events = [line.split(": ", 1)[1] for line in response.text.splitlines() if line.startswith("event: ")]
    assert "content_block_delta" in events
    assert "message_stop" not in events and events[-1] == "error", events
    error = json.loads(response.text.rstrip().rsplit("data: ", 1)[1])
    assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": "PII detected"}}
    record = ingested(ms, response)
    assert record["statusCode"] == "400" and record["path"] == "/v1/messages"

    ms.llm.configure(echo=False, reply="A perfectly fine answer")
    clean = post(ms.block, "/v1/messages", body)
    assert [line for line in clean.text.splitlines() if line.startswith("event: ")][-1] == "event: message_stop"


def ends_with_an_error_event(response: httpx.Response, reason: str) -> None:
    """A stream the response check refused: no ``[DONE]``, and an error event with Akto's reason last."""
    assert response.status_code == 200, response.text
    data = events(response)
    assert "[DONE]" not in data, data
    assert json.loads(data[-1])["error"]["message"] == reason


STREAMS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "text_completion": ("/v1/completions", {"prompt": "What is your number?"}, {}),
    "legacy_function_call": (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "What is your number?"}],
            "functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}],
        },
        {"function_call": True},
    ),
}


@pytest.mark.parametrize("shape", sorted(STREAMS))
def test_check_response_reads_every_stream_shape_it_lets_through(ms: Masking, shape: str) -> None:
    path, body, llm = STREAMS[shape]
    request = {"model": "gpt-3.5-turbo", "stream": True, **body}
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120", **llm)
    # Unstreamed, the same response is refused: streamed, it must not pass either.
    assert post(ms.block, path, {**request, "stream": False}).status_code == 400
    response = post(ms.block, path, request)
    ends_with_an_error_event(response, "PII detected")
    record = ingested(ms, response)
    assert record["statusCode"] == "400" and record["path"] == path
    assert json.loads(record["metadata"])["blocked_on"] == "response"

    ms.llm.configure(echo=False, reply="A perfectly fine answer", **llm)
    clean = post(ms.block, path, request)
    assert events(clean)[-1] == "[DONE]", clean.text


def test_check_response_reads_a_gemini_native_stream(ms: Masking) -> None:
    ms.llm.configure(echo=False, reply="Sure: my ssn is 078-05-1120")
    body = {"contents": [{"role": "user", "parts": [{"text": "What is your number?"}]}]}
    path = "/v1beta/models/gpt-3.5-turbo:streamGenerateContent?alt=sse"
    response = post(ms.block, path, body)
    assert response.status_code == 200, response.text
    payloads = [json.loads(e) for e in events(response)]
    said = "".join(p["text"] for e in payloads for c in e.get("candidates", []) for p in c["content"]["parts"])
    assert said == "Sure: my ssn is 078-05-1120", "the stream went out as it came"
    assert response.text.rstrip().splitlines()[-2] == "event: error", response.text[-400:]
    assert "PII detected" in response.text.rstrip().splitlines()[-1]
    record = ingested(ms, response)
    assert record["statusCode"] == "400"
