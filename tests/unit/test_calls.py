"""The key the hook keeps its per-call state under: made by the hook, never taken from the client."""

from __future__ import annotations

from types import SimpleNamespace

from akto_hook import calls


def test_a_call_keeps_one_key_from_its_first_hook_to_its_logs() -> None:
    details: dict[str, object] = {}
    data = {"litellm_call_id": "client-chosen", "litellm_logging_obj": SimpleNamespace(model_call_details=details)}
    key = calls.key_of(data)
    assert calls.key_of(data) == key, "every later hook of the call gets the same key"
    assert calls.logged_key({**details, "litellm_call_id": "client-chosen"}) == key
    assert "client-chosen" not in key


def test_two_calls_with_one_call_id_get_two_keys() -> None:
    def one() -> dict[str, object]:
        return {"litellm_call_id": "same", "litellm_logging_obj": SimpleNamespace(model_call_details={})}

    assert calls.key_of(one()) != calls.key_of(one())


def test_a_string_in_the_keys_place_is_not_a_key() -> None:
    # A client's body field of the same name can reach LiteLLM's logging kwargs as a plain string.
    forged = {calls.FIELD: "another-calls-key", "litellm_call_id": "c1"}
    assert calls.logged_key(forged) == calls.logged_key({"litellm_call_id": "c1"})
    details: dict[str, object] = {calls.FIELD: "another-calls-key"}
    key = calls.key_of({"litellm_call_id": "c1", "litellm_logging_obj": SimpleNamespace(model_call_details=details)})
    assert key != "another-calls-key" and details[calls.FIELD] == key


def test_without_a_logging_object_the_call_id_keys_the_call() -> None:
    assert calls.key_of({"litellm_call_id": "c1"}) == calls.logged_key({"litellm_call_id": "c1"})
