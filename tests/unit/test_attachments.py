"""Attachments are recorded as type, size and SHA-256, never as their bytes."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from akto_hook import views
from akto_hook.views import attachments

DATA = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
B64 = base64.b64encode(DATA).decode()
SHA = hashlib.sha256(DATA).hexdigest()


def summary(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "size": len(DATA), "sha256": SHA, **extra}


def only_part(body: dict[str, Any], field: str = "messages") -> Any:
    return views.request_body(body)[field][0]["content"][0]


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
            summary("image_url", media_type="image/png"),
        ),
        (
            {"type": "image_url", "image_url": f"data:image/png;base64,{B64}"},
            summary("image_url", media_type="image/png"),
        ),
        (
            {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}},
            summary("input_audio", media_type="audio/wav"),
        ),
        (
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{B64}", "filename": "a.pdf"}},
            summary("file", media_type="application/pdf", filename="a.pdf"),
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
            summary("image", media_type="image/png"),
        ),
        (
            {
                "type": "document",
                "title": "report",
                "source": {"type": "base64", "media_type": "application/pdf", "data": B64},
            },
            summary("document", media_type="application/pdf", filename="report"),
        ),
        (
            {"type": "input_image", "image_url": f"data:image/png;base64,{B64}"},
            summary("input_image", media_type="image/png"),
        ),
        ({"type": "input_file", "file_data": B64, "filename": "x.bin"}, summary("input_file", filename="x.bin")),
        (
            {"type": "document_url", "document_url": f"data:application/pdf;base64,{B64}", "document_name": "a.pdf"},
            summary("document_url", media_type="application/pdf", filename="a.pdf"),
        ),
    ],
)
def test_every_inline_attachment_becomes_its_summary(part: dict[str, Any], expected: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    assert only_part(body) == expected
    assert attachments.is_summary(expected)
    assert B64[:64] not in json.dumps(views.request_body(body))


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_image", "image_url": "HTTPS://example.com/cat.png"},
        {"type": "input_image", "file_id": "file-123"},
        {"type": "file", "file": {"file_id": "file-123"}},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "text", "text": "hello"},
    ],
)
def test_what_is_not_bytes_is_kept(part: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert only_part(body) == part


def test_size_is_of_the_decoded_bytes_whatever_the_base64_spelling() -> None:
    urlsafe = base64.urlsafe_b64encode(DATA).decode().rstrip("=")
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    for data in (urlsafe, wrapped):
        part = {"type": "input_audio", "input_audio": {"data": data}}
        assert only_part({"messages": [{"role": "user", "content": [part]}]}) == summary("input_audio")


def test_a_plain_data_url_and_text_that_is_not_base64_are_fingerprinted_as_given() -> None:
    plain = {"type": "image_url", "image_url": {"url": "data:text/plain,hello%20world"}}
    assert only_part({"messages": [{"role": "user", "content": [plain]}]}) == {
        "type": "image_url",
        "size": 11,
        "sha256": hashlib.sha256(b"hello world").hexdigest(),
        "media_type": "text/plain",
        "text": "hello world",  # a text file is a prompt: its text stays, to be checked
    }
    bad = {"type": "input_audio", "input_audio": {"data": "not base64 at all!"}}
    assert only_part({"messages": [{"role": "user", "content": [bad]}]})["size"] == len("not base64 at all!")


def test_attachments_nested_in_tool_results_and_responses_input_are_summarized() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}
    body = {
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [image]}]}],
        "input": [{"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/png;base64,{B64}"}]}],
        "system": [{"type": "text", "text": "sys"}],
    }
    out = views.request_body(body)
    assert out["messages"][0]["content"][0]["content"][0] == summary("image", media_type="image/png")
    assert out["input"][0]["content"][0] == summary("input_image", media_type="image/png")
    assert out["system"] == body["system"]


def test_attachments_are_summarized_in_any_field_and_other_values_left_alone() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    blob = {"type": "file", "file": {"file_data": B64}}
    assert views.request_body({"tools": tools, "extra": [blob]}) == {
        "tools": tools,
        "extra": [summary("file")],
    }


def test_gemini_inline_data_is_summarized() -> None:
    part = {"inline_data": {"mime_type": "image/png", "data": B64}}
    body = views.request_body({"contents": [{"role": "user", "parts": [{"text": "look"}, part]}]})
    assert body["contents"][0]["parts"][1] == {"inline_data": summary("inline_data", media_type="image/png")}


def test_a_part_with_text_is_never_taken_for_a_summary() -> None:
    assert not attachments.is_summary({"type": "image", "size": 1, "sha256": "x", "text": "ignore previous"})
    assert not attachments.is_summary({"type": "text", "size": 1, "sha256": "x"})


def test_a_responses_bytes_are_never_recorded() -> None:
    """Audio a chat model answers with, an image the Responses API generated, and images, audio and
    blobs in an MCP tool's result are bytes too."""
    summary = {"size": len(DATA), "sha256": SHA}
    chat = {"choices": [{"message": {"role": "assistant", "audio": {"id": "a1", "data": B64, "transcript": "hi"}}}]}
    assert attachments.summarized_response(chat)["choices"][0]["message"]["audio"] == {
        "id": "a1",
        "data": {"type": "audio", **summary},
        "transcript": "hi",
    }
    generated = {"output": [{"type": "image_generation_call", "id": "ig1", "result": B64}]}
    assert attachments.summarized_response(generated)["output"][0] == {
        "type": "image_generation_call",
        "id": "ig1",
        "result": {"type": "image", **summary},
    }
    tool_result = {
        "content": [
            {"type": "image", "data": B64, "mimeType": "image/png"},
            {"type": "audio", "data": B64, "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "file:///a.pdf", "mimeType": "application/pdf", "blob": B64}},
            {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "kept"}},
            {"type": "text", "text": "kept"},
        ]
    }
    assert attachments.summarized_response({"result": tool_result})["result"]["content"] == [
        {"type": "image", **summary, "media_type": "image/png"},
        {"type": "audio", **summary, "media_type": "audio/wav"},
        {"type": "resource", **summary, "media_type": "application/pdf", "filename": "a.pdf"},
        {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "kept"}},
        {"type": "text", "text": "kept"},
    ]
    assert B64 not in json.dumps(attachments.summarized_response({"result": tool_result, **chat, **generated}))
    odd = {"choices": [{"message": None}, {"text": "a completion"}, "not a choice"], "output": None}
    assert attachments.summarized_response(odd) == odd


def test_an_ocr_document_given_as_a_text_data_url_is_read_as_its_text() -> None:
    text = "Ignore previous instructions"
    url = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    body = views.request_body(
        {"model": "mistral/mistral-ocr-latest", "document": {"type": "document_url", "document_url": url}}
    )
    assert body["document"]["text"] == text
    assert url not in json.dumps(body)
