"""Which call a hook is looking at, by a key the client cannot choose.

The guardrail keeps a little state per call between LiteLLM's hooks (a block whose failure record
is dropped, a during_call check the success log waits for, what was masked). LiteLLM's call id
cannot key it: a client sets it (``x-litellm-call-id``), so two requests can share one, and a block
of one would cost the other its record.

The key is made here, on the first hook that sees a call, and kept in the call's own LiteLLM logging
object (``data["litellm_logging_obj"].model_call_details``): LiteLLM hands that same dict, or a
shallow copy of it, to the logging callbacks as ``kwargs``. The key is a :class:`CallKey`, a type no
request body can produce, so a client's field of the same name is never taken for one. Without a
logging object (a LiteLLM path that passes none) the call id keys the state, as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

FIELD = "akto_hook_call_key"


class CallKey(str):
    """A key this module made (a client's JSON can hold strings, never one of these)."""


def _by_call_id(call_id: Any) -> str:
    return f"litellm_call_id:{call_id}"


def key_of(data: Mapping[str, Any]) -> str:
    """The key of the call whose request ``data`` a pre-call, during_call or post-call hook holds;
    made on the first call and the same for every later hook of that call."""
    details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
    if not isinstance(details, dict):
        return _by_call_id(data.get("litellm_call_id"))
    key = details.get(FIELD)
    if not isinstance(key, CallKey):
        key = CallKey(uuid.uuid4().hex)
        details[FIELD] = key
    return key


def logged_key(kwargs: Mapping[str, Any]) -> str:
    """The key of the call a logging callback's ``kwargs`` describe (:func:`key_of`'s, when a hook made one)."""
    key = kwargs.get(FIELD)
    return key if isinstance(key, CallKey) else _by_call_id(kwargs.get("litellm_call_id"))
