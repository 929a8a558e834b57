"""Turning LiteLLM 1.108.7's hook and logging dicts into records."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest

from akto_hook import views
from akto_hook.views import capture
from akto_ingest.config import AktoSettings
from akto_ingest.record import Record
from akto_ingest.wire import MESSAGE_ID_HEADER, envelope

CALL_ID = "5b8a3c1e-1f7e-4c2b-9d55-0c6f8a2b7e11"
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello, how are you?"},
]
# The client's headers as LiteLLM hands them over: credentials included, so capture must drop them.
CLIENT_HEADERS = {
    "host": "localhost:4000",
    "user-agent": "curl/8.5.0",
    "accept": "*/*",
    "content-type": "application/json",
    "authorization": "Bearer sk-litellm-SECRET-1234",
    "cookie": "session=SECRET-cookie",
    "x-api-key": "SECRET-x-api-key",
    "proxy-authorization": "Basic SECRET-proxy",
    "openai-organization-api-key": "SECRET-org",
    "x-request-id": "req-77",
}
SAFE_HEADERS = {
    "host": "localhost:4000",
    "user-agent": "curl/8.5.0",
    "accept": "*/*",
    "content-type": "application/json",
    "x-request-id": "req-77",
}
AKTO = AktoSettings.load({"akto_base_url": "http://akto", "akto_api_key": "k"}, env={})


def request_data(**overrides: Any) -> dict[str, Any]:
    """The ``data`` dict of LiteLLM's async_pre_call_hook on /v1/chat/completions."""
    body = {"model": "gpt-4o-mini", "messages": copy.deepcopy(MESSAGES), "temperature": 0.2}
    data: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": copy.deepcopy(MESSAGES),
        "temperature": 0.2,
        "metadata": {
            "requester_ip_address": "10.0.0.7",
            "user_api_key_user_id": "user-1",
            "user_api_key_team_id": "team-9",
            "user_api_key_alias": "ci-key",
            "user_api_key_request_route": "/v1/chat/completions",
            "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
            "headers": dict(CLIENT_HEADERS),
        },
        "proxy_server_request": {
            "url": "http://localhost:4000/v1/chat/completions?trace=1",
            "method": "POST",
            "headers": dict(CLIENT_HEADERS),
            "body": body,
            "credential_fields": (),
            "arrival_time": 1_700_000_000.5,
        },
        "litellm_call_id": CALL_ID,
    }
    data.update(overrides)
    return data


def log_kwargs(error: dict[str, Any] | None = None, exception: Exception | None = None) -> dict[str, Any]:
    """The ``kwargs`` of LiteLLM's async_log_success_event / async_log_failure_event."""
    data = request_data()
    slo_metadata = {
        "user_api_key_hash": data["metadata"]["user_api_key_hash"],
        "user_api_key_alias": "ci-key",
        "user_api_key_team_id": "team-9",
        "user_api_key_user_id": "user-1",
        "user_api_key_end_user_id": None,
        "user_api_key_request_route": "/v1/chat/completions",
        "requester_ip_address": "10.0.0.7",
        "user_agent": "curl/8.5.0",
        "spend_logs_metadata": None,
    }
    response = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "I'm fine, thanks!"},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": copy.deepcopy(MESSAGES),
        "litellm_call_id": CALL_ID,
        "litellm_params": {
            "proxy_server_request": data["proxy_server_request"],
            "metadata": data["metadata"],
            "litellm_call_id": CALL_ID,
        },
        "standard_logging_object": {
            "id": CALL_ID,
            "call_type": "acompletion",
            "status": "failure" if error is not None else "success",
            "response": None if error is not None else response,
            "messages": copy.deepcopy(MESSAGES),
            "metadata": slo_metadata,
            "error_information": error,
            "model": "gpt-4o-mini",
        },
    }
    if exception is not None:
        kwargs["exception"] = exception
    return kwargs


def no_credentials(record: Record) -> None:
    text = record.to_json() + json.dumps(envelope(record, AKTO))
    assert "SECRET" not in text
    assert record.request_headers == SAFE_HEADERS


# -- from_request ----------------------------------------------------------------------------------


def test_from_request_builds_the_block_record() -> None:
    record = capture.from_request(request_data(), "block")

    assert record.id == CALL_ID
    assert record.mode == "block"
    assert record.path == "/v1/chat/completions"  # from the url, query string dropped
    assert record.method == "POST"
    assert record.client_ip == "10.0.0.7"
    assert record.request_body == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
    assert record.metadata == {"user_id": "user-1", "team_id": "team-9", "key_alias": "ci-key"}
    assert record.response_body is None
    assert record.status_code == 200
    assert record.blocked_reason is None
    no_credentials(record)
    assert json.loads(envelope(record, AKTO)["requestHeaders"])[MESSAGE_ID_HEADER] == CALL_ID


def test_from_request_path_comes_from_the_url() -> None:
    data = request_data()
    data["proxy_server_request"]["url"] = "http://0.0.0.0:4000/chat/completions"
    data["metadata"]["user_api_key_request_route"] = "/v1/chat/completions"
    assert capture.from_request(data, "block").path == "/chat/completions"


def test_from_request_path_falls_back_to_the_route_then_default() -> None:
    data = request_data()
    data["proxy_server_request"].pop("url")
    data["metadata"]["user_api_key_request_route"] = "/v1/embeddings"
    assert capture.from_request(data, "block").path == "/v1/embeddings"
    data["metadata"].pop("user_api_key_request_route")
    assert capture.from_request(data, "block").path == "/v1/chat/completions"


def test_from_request_without_proxy_request_uses_the_data_itself() -> None:
    data = request_data()
    data.pop("proxy_server_request")
    record = capture.from_request(data, "monitor")
    assert record.request_body == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
    assert record.request_headers == {}
    assert record.mode == "monitor"


def test_from_request_reads_litellm_metadata_on_routes_that_use_it() -> None:
    data = request_data()
    data["litellm_metadata"] = data.pop("metadata")
    record = capture.from_request(data, "block")
    assert record.client_ip == "10.0.0.7"
    assert record.metadata["user_id"] == "user-1"


def test_from_request_without_call_id_gets_a_fresh_id() -> None:
    first = capture.from_request(request_data(litellm_call_id=None), "block")
    second = capture.from_request(request_data(litellm_call_id=None), "block")
    assert first.id and second.id and first.id != second.id


def test_from_request_keeps_every_client_field_and_drops_litellm_additions() -> None:
    data = request_data()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    data["proxy_server_request"]["body"] = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "tools": tools,
        "tool_choice": "auto",
        "metadata": {"headers": CLIENT_HEADERS},
        "user": "end-user",
    }
    record = capture.from_request(data, "block")
    assert record.request_body == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "tools": tools,
        "tool_choice": "auto",
        "user": "end-user",
        "temperature": 0.2,
    }
    no_credentials(record)


def test_from_request_session_id() -> None:
    data = request_data()
    data["metadata"]["session_id"] = "sess-1"
    record = capture.from_request(data, "block")
    assert record.session_id == "sess-1"


def test_from_request_tolerates_a_numeric_session_id() -> None:
    data = request_data()
    data["metadata"]["session_id"] = 42
    record = capture.from_request(data, "block")
    assert record.session_id in ("42", None)


# -- from_success ----------------------------------------------------------------------------------


def test_from_success_builds_the_record_with_the_response() -> None:
    kwargs = log_kwargs()
    record = capture.from_success(kwargs, response=None, mode="monitor")

    assert record.id == CALL_ID
    assert record.mode == "monitor"
    assert record.path == "/v1/chat/completions"
    assert record.status_code == 200
    assert record.response_body == kwargs["standard_logging_object"]["response"]
    assert record.request_body == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
    assert record.client_ip == "10.0.0.7"
    assert record.metadata == {"user_id": "user-1", "team_id": "team-9", "key_alias": "ci-key"}
    no_credentials(record)
    body = envelope(record, AKTO)
    assert json.loads(body["responsePayload"])["choices"][0]["message"]["content"] == "I'm fine, thanks!"


def test_from_success_falls_back_to_the_response_object() -> None:
    class Response:
        def model_dump(self) -> dict[str, Any]:
            return {"choices": [{"message": {"content": "from the object"}}]}

    kwargs = log_kwargs()
    kwargs["standard_logging_object"]["response"] = "not a dict"
    record = capture.from_success(kwargs, Response(), "block")
    assert record.response_body == {"choices": [{"message": {"content": "from the object"}}]}


def test_from_success_without_proxy_request_uses_logged_messages() -> None:
    kwargs = log_kwargs()
    kwargs["litellm_params"].pop("proxy_server_request")
    kwargs["litellm_params"]["metadata"] = {}
    kwargs["optional_params"] = {"temperature": 0.3, "api_key": "sk-secret"}
    record = capture.from_success(kwargs, None, "block")
    # The SDK's call params stand for the request it has not: all of them, credentials redacted.
    assert record.request_body == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "temperature": 0.3,
        "api_key": views.REDACTED,
    }
    assert record.path == "/v1/chat/completions"  # from the logged route
    assert record.client_ip == "10.0.0.7"  # from the standard logging metadata


# -- from_failure ----------------------------------------------------------------------------------


def test_from_failure_takes_status_and_message_from_error_information() -> None:
    kwargs = log_kwargs(error={"error_code": "429", "error_class": "RateLimitError", "error_message": "Slow down"})
    record = capture.from_failure(kwargs, "block")

    assert record.id == CALL_ID
    assert record.status_code == 429
    assert record.response_body == {"error": {"message": "Slow down", "code": "429"}}
    assert record.path == "/v1/chat/completions"
    no_credentials(record)
    body = envelope(record, AKTO)
    assert (body["statusCode"], body["status"]) == ("429", "429")


def test_from_failure_falls_back_to_the_exception_status() -> None:
    class UpstreamError(Exception):
        status_code = 502

    kwargs = log_kwargs(error={"error_code": None, "error_message": None}, exception=UpstreamError("bad gateway"))
    record = capture.from_failure(kwargs, "monitor")
    assert record.status_code == 502
    assert record.response_body == {"error": {"message": "bad gateway", "code": "502"}}


@pytest.mark.parametrize("code", ["not-a-number", "42", "1000", ""])
def test_from_failure_ignores_a_bogus_error_code(code: str) -> None:
    record = capture.from_failure(log_kwargs(error={"error_code": code, "error_message": "boom"}), "block")
    assert record.status_code == 500
    assert record.response_body == {"error": {"message": "boom", "code": "500"}}


def test_from_failure_with_nothing_known_is_a_500() -> None:
    kwargs = log_kwargs(error={})
    kwargs["standard_logging_object"]["error_information"] = None
    record = capture.from_failure(kwargs, "block")
    assert record.status_code == 500
    assert record.response_body == {"error": {"message": "LLM call failed", "code": "500"}}


def test_records_survive_the_queue_round_trip() -> None:
    for record in (
        capture.from_request(request_data(), "block"),
        capture.from_success(log_kwargs(), None, "monitor"),
        capture.from_failure(log_kwargs(error={"error_code": "400", "error_message": "bad"}), "block"),
    ):
        assert Record.from_json(record.to_json()) == record


# -- more APIs, attachments, identity -----------------------------------------------------------------


def test_every_field_is_kept_and_attachments_summarized() -> None:
    data = request_data()
    image = base64.b64encode(b"\x00" * 100).decode()
    body = {
        "model": "claude",
        "system": "anthropic system prompt",
        "instructions": "responses instructions",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:;base64,{image}"}}]}
        ],
        "max_tokens": 10,
    }
    data["proxy_server_request"]["body"] = body
    data.update(copy.deepcopy(body))  # LiteLLM's data holds the request it forwards
    record = capture.from_request(data, "block")
    assert record.request_body["system"] == "anthropic system prompt"
    assert record.request_body["instructions"] == "responses instructions"
    assert record.request_body["max_tokens"] == 10
    assert record.request_body["messages"][0]["content"][0] == {
        "type": "image_url",
        "size": 100,
        "sha256": hashlib.sha256(b"\x00" * 100).hexdigest(),
    }
    assert image not in record.to_json()


def test_identity_tags_come_from_litellm_auth_metadata() -> None:
    data = request_data()
    data["metadata"].update(
        {
            "user_api_key_user_email": "ada@example.com",
            "user_api_key_team_alias": "research",
            "user_api_key_end_user_id": "cust-1",
        }
    )
    assert capture.from_request(data, "block").metadata == {
        "user_id": "user-1",
        "user_email": "ada@example.com",
        "team_id": "team-9",
        "team_alias": "research",
        "key_alias": "ci-key",
        "end_user_id": "cust-1",
    }


def test_client_metadata_does_not_hide_litellm_metadata() -> None:
    """On /v1/messages "metadata" is the client's own (Anthropic's user_id); LiteLLM's is litellm_metadata."""
    data = request_data()
    data["litellm_metadata"] = data.pop("metadata")
    data["metadata"] = {"user_id": "anthropic-user"}
    record = capture.from_request(data, "block")
    assert record.metadata["user_id"] == "user-1"
    assert record.client_ip == "10.0.0.7"


def test_session_id_from_litellm_session_then_metadata_then_client_trace_id() -> None:
    assert capture.from_request(request_data(litellm_session_id="s-1"), "block").session_id == "s-1"
    data = request_data()
    data["metadata"]["trace_id"] = "t-1"
    assert capture.from_request(data, "block").session_id == "t-1"
    data["metadata"]["session_id"] = "s-2"
    assert capture.from_request(data, "block").session_id == "s-2"
    assert capture.from_request(request_data(), "block").session_id is None


def test_logged_record_takes_session_ip_and_end_user_from_the_logging_payload() -> None:
    kwargs = log_kwargs()
    kwargs["litellm_params"]["litellm_session_id"] = "s-9"
    kwargs["litellm_params"]["metadata"] = {}
    slo = kwargs["standard_logging_object"]
    slo.update(
        {"session_id": "", "trace_id": "made-up-per-request", "requester_ip_address": "10.1.2.3", "end_user": "cust-7"}
    )
    slo["metadata"].pop("requester_ip_address")
    record = capture.from_success(kwargs, None, "block")
    assert record.session_id == "s-9"
    assert record.client_ip == "10.1.2.3"
    assert record.metadata["end_user_id"] == "cust-7"
    kwargs["litellm_params"].pop("litellm_session_id")
    assert capture.from_success(kwargs, None, "block").session_id is None
