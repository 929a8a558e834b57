"""The key the hook keeps its per-call state under: made by the hook, never taken from the client,
and the state goes with the call."""

from __future__ import annotations

import copy
import gc
from types import SimpleNamespace
from typing import Any

from akto_hook import calls


def request(call_id: str = "client-chosen") -> dict[str, Any]:
    return {"litellm_call_id": call_id, "litellm_logging_obj": SimpleNamespace(model_call_details={})}


def test_a_call_keeps_one_key_from_its_first_hook_to_its_logs() -> None:
    data = request()
    key = calls.key_of(data)
    assert calls.key_of(data) is key, "every later hook of the call gets the same key"
    details = data["litellm_logging_obj"].model_call_details
    assert calls.logged_key({**details, "litellm_call_id": "client-chosen"}) is key
    assert calls.logged_key(copy.deepcopy({**details})) is key, "a logger's deep copy keeps it"


def test_two_calls_with_one_call_id_get_two_keys() -> None:
    assert calls.key_of(request("same")) != calls.key_of(request("same"))


def test_a_string_in_the_keys_place_is_not_a_key() -> None:
    # A client's body field of the same name can reach LiteLLM's logging kwargs as a plain string.
    forged = {calls.FIELD: "another-calls-key", "litellm_call_id": "c1"}
    assert calls.logged_key(forged) == calls.logged_key({"litellm_call_id": "c1"})
    data = request("c1")
    data["litellm_logging_obj"].model_call_details[calls.FIELD] = "another-calls-key"
    key = calls.key_of(data)
    assert isinstance(key, calls.CallKey) and data["litellm_logging_obj"].model_call_details[calls.FIELD] is key


def test_without_a_logging_object_the_call_id_keys_the_call() -> None:
    assert calls.key_of({"litellm_call_id": "c1"}) == calls.logged_key({"litellm_call_id": "c1"})


def test_state_goes_with_its_call_and_call_ids_are_bounded() -> None:
    state: calls.PerCall[int] = calls.PerCall(size=2)
    data = request()
    state[calls.key_of(data)] = 1
    assert calls.key_of(data) in state and len(state) == 1
    del data
    gc.collect()
    assert len(state) == 0, "a call LiteLLM never logs leaves nothing behind"
    for call_id in ("a", "b", "c"):
        state[calls.key_of({"litellm_call_id": call_id})] = 1
    assert len(state) == 2 and calls.key_of({"litellm_call_id": "a"}) not in state
