"""Mapping Akto's masks back onto requests and responses (``akto_hook.verdicts.masking``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from akto_hook import views
from akto_hook.verdicts import masking
from akto_hook.verdicts.check import Decision, Mask, split
from akto_ingest.record import Record
from akto_ingest.wire import Verdict

CARD = "4111-1111-1111-1111"


def payload(body: Any) -> str:
    """A requestPayload as wire.envelope makes it."""
    return json.dumps({"body": json.dumps(body)})


def akto_mask(body: Any, old: str = CARD, new: str = "[CARD]") -> Mask:
    """What Akto answers for a masking policy: the payload string with the value replaced."""
    sent = payload(body)
    return Mask(sent, sent.replace(old, new))


def masked(data: dict[str, Any], *, old: str = CARD, new: str = "[CARD]") -> dict[str, Any]:
    body = {k: v for k, v in data.items() if k != "litellm_call_id"}
    found = masking.request_changes(body, [akto_mask(body, old, new)], split=False)
    return masking.masked_request(data, found)


def test_chat_string_and_content_parts() -> None:
    data: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": f"card {CARD}"},
            {"role": "user", "content": [{"type": "text", "text": f"again {CARD}"}, {"type": "image_url"}]},
        ],
        "litellm_call_id": "c1",
    }
    out = masked(data)
    assert out["messages"][1]["content"] == "card [CARD]"
    assert out["messages"][2]["content"][0]["text"] == "again [CARD]"
    assert out["messages"][2]["content"][1] == {"type": "image_url"}
    assert out["litellm_call_id"] == "c1"
    assert data["messages"][1]["content"] == f"card {CARD}", "LiteLLM's data is not changed in place"


def test_responses_api_input_and_instructions() -> None:
    data: dict[str, Any] = {"model": "gpt-4o", "input": f"card {CARD}", "instructions": f"never say {CARD}"}
    out = masked(data)
    assert out["input"] == "card [CARD]" and out["instructions"] == "never say [CARD]"
    items = {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": f"card {CARD}"}]}],
    }
    assert masked(items)["input"][0]["content"][0]["text"] == "card [CARD]"


def test_anthropic_system_string_and_blocks_and_messages() -> None:
    data: dict[str, Any] = {
        "model": "claude",
        "system": f"the card is {CARD}",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"card {CARD}"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": f"{CARD} ok"}]},
        ],
    }
    out = masked(data)
    assert out["system"] == "the card is [CARD]"
    assert out["messages"][0]["content"][0]["text"] == "card [CARD]"
    assert out["messages"][1]["content"][0]["content"] == "[CARD] ok"
    blocks = {"model": "claude", "system": [{"type": "text", "text": f"card {CARD}"}], "messages": []}
    assert masked(blocks)["system"][0]["text"] == "card [CARD]"


def test_a_mask_that_changes_the_shape_is_unmappable() -> None:
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(masking.Unmappable, match="shape"):
        masked(data, old="role", new="r0le")


def test_a_mask_of_something_that_is_not_text_is_unmappable() -> None:
    body = {"model": "m", "max_tokens": 50, "messages": []}
    sent = payload(body)
    with pytest.raises(masking.Unmappable, match="max_tokens"):
        masking.request_changes(body, [Mask(sent, sent.replace("50", '\\"[N]\\"'))], split=False)


def test_a_mask_inside_an_attached_text_files_text_is_unmappable() -> None:
    # The check reads a text file as its decoded text (views.attachments); LiteLLM sends its base64.
    # Akto's mask of that text cannot be written back into the file, so the request is refused.
    encoded = base64.b64encode(f"card {CARD}".encode()).decode()
    part = {"type": "file", "file": {"filename": "a.txt", "file_data": f"data:text/plain;base64,{encoded}"}}
    data = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "read"}, part]}]}
    body = views.request_body(data)
    assert CARD in json.dumps(body), "the check reads the file's text"
    found = masking.request_changes(body, [akto_mask(body)], split=False)
    assert [change.path for change in found] == [("messages", 0, "content", 1, "text")]
    with pytest.raises(masking.Unmappable, match=r"messages\.0\.content\.1\.text is not the text Akto saw"):
        masking.masked_request(data, found)


def test_a_payload_that_is_not_json_is_unmappable() -> None:
    body = {"model": "m", "messages": []}
    with pytest.raises(masking.Unmappable, match="not JSON"):
        masking.request_changes(body, [Mask(payload(body), "{not json")], split=False)


def test_a_request_changed_since_the_check_is_unmappable() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"card {CARD}"}]}
    found = masking.request_changes(body, [akto_mask(body)], split=False)
    data = {"model": "m", "messages": [{"role": "user", "content": "something else"}]}
    with pytest.raises(masking.Unmappable, match=r"messages\.0\.content"):
        masking.masked_request(data, found)


def parts_masks(body: dict[str, Any], budget: int) -> list[Mask]:
    """The masks Akto would answer for the parts of a split check of ``body``."""
    return [akto_mask(part) for part in split(body, budget=budget, overlap=64) if CARD in json.dumps(part)]


def test_split_request_whole_text_is_mapped_back_by_text() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x" * 3000},
            {"role": "user", "content": [{"type": "text", "text": f"card {CARD}"}]},
            {"role": "user", "content": f"card {CARD}"},
        ],
    }
    masks = parts_masks(body, 2000)
    assert masks
    out = masking.masked_request(body, masking.request_changes(body, masks, split=True))
    assert out["messages"][1]["content"][0]["text"] == "card [CARD]"
    assert out["messages"][2]["content"] == "card [CARD]"
    assert out["messages"][0]["content"] == "x" * 3000


def test_split_request_mask_inside_a_sliced_text_is_unmappable() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 3000 + f" card {CARD}"}]}
    with pytest.raises(masking.Unmappable, match="too long to check whole"):
        masking.request_changes(body, parts_masks(body, 2000), split=True)


def test_split_request_mask_in_json_carried_parts_is_unmappable() -> None:
    # Tool calls travel in the parts as JSON text: not a text of the request.
    body = {
        "model": "m",
        "messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": CARD}}]}],
        "tools": [{"x": "y" * 3000}],
    }
    with pytest.raises(masking.Unmappable):
        masking.request_changes(body, parts_masks(body, 2000), split=True)


class Message:
    def __init__(self, content: str) -> None:
        self.content = content


class Choice:
    def __init__(self, content: str) -> None:
        self.message = Message(content)


class Response:
    def __init__(self, content: str) -> None:
        self.choices = [Choice(content)]

    def model_dump(self) -> dict[str, Any]:
        return {"choices": [{"message": {"content": c.message.content}} for c in self.choices]}


def test_response_mask_is_applied_to_the_response_object_in_place() -> None:
    response = Response(f"your card is {CARD}")
    sent = response.model_dump()
    rewritten = json.dumps(sent).replace(CARD, "[CARD]")
    masking.apply_to_object(response, masking.changes(sent, masking.decode_payload(rewritten)))
    assert response.choices[0].message.content == "your card is [CARD]"


def test_response_mask_of_a_dict_response() -> None:
    response = {"content": [{"type": "text", "text": f"card {CARD}"}]}
    rewritten = json.dumps(response).replace(CARD, "[CARD]")
    masking.apply_to_object(response, masking.changes(json.loads(json.dumps(response)), json.loads(rewritten)))
    assert response["content"][0]["text"] == "card [CARD]"


def test_response_mask_of_a_path_the_object_lacks_is_unmappable() -> None:
    change = masking.Change(("choices", 3, "message", "content"), "a", "b")
    with pytest.raises(masking.Unmappable, match="not in the response"):
        masking.apply_to_object(Response("a"), [change])


def test_blocked_record_keeps_akto_masked_body() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"card {CARD}"}]}
    recorded, is_masked = masking.recorded_request(body, [akto_mask(body)], split=False)
    assert is_masked and CARD not in json.dumps(recorded)
    sent = payload(body)
    recorded, is_masked = masking.recorded_request(body, [Mask(sent, "{not json")], split=False)
    assert not is_masked and recorded == body


def test_masked_calls_apply_and_tag_the_record_once() -> None:
    calls = masking.MaskedCalls(size=2)
    body = {"model": "m", "messages": [{"role": "user", "content": f"card {CARD}"}]}
    calls.remember("k1", "request", masking.request_changes(body, [akto_mask(body)], split=False))
    calls.remember("k1", "response")
    record = Record(id="c1", mode="block", request_body=body)
    assert calls.applied(record, "k1").request_body["messages"][0]["content"] == "card [CARD]"
    assert calls.applied(record, "k2") == record, "kept by the key the hook made, not by the call id"
    tagged = calls.tagged(record, "k1")
    assert tagged.metadata["masked"] == "request,response"
    assert tagged.request_body["messages"][0]["content"] == "card [CARD]"
    assert calls.tagged(record, "k1") == record, "forgotten once its record is made"
    for call in ("a", "b", "c"):
        calls.remember(call, "request")
    assert calls.tagged(Record(id="a", mode="block"), "a").metadata == {}, "bounded"


def test_a_refused_mask_keeps_akto_policy_rule_and_severity_in_its_record() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"card {CARD}"}]}
    verdict = Verdict(allowed=True, reason="", behaviour="", policy="PII Mask", rule="card", severity="medium")
    decision = Decision(verdict, 1, masks=(akto_mask(body),))
    record = Record(id="c1", mode="block", request_body=body)
    refused = masking.refused_record(record, decision, "cannot be applied", during_call=False)
    assert (refused.blocked_policy, refused.blocked_rule, refused.blocked_severity) == ("PII Mask", "card", "medium")
