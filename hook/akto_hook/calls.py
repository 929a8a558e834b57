"""Which call a hook is looking at, by a key the client cannot choose, and state kept per call.

The guardrail keeps a little state per call between LiteLLM's hooks (a block whose failure record
is dropped, a during_call check the success log waits for, what was masked). LiteLLM's call id
cannot key it: a client sets it (``x-litellm-call-id``), so two requests can share one, and a block
of one would cost the other its record.

The key is made here, on the first hook that sees a call, and kept in the call's own LiteLLM logging
object (``data["litellm_logging_obj"].model_call_details``): LiteLLM hands that same dict, or a copy
of it, to the logging callbacks as ``kwargs``. It is a :class:`CallKey`, a type no request body can
produce, so a client's field of the same name is never taken for one. :class:`PerCall` holds a
call's state only while the call's logging object holds its key, so state that no later hook takes
(a call LiteLLM never logs) goes with the call instead of piling up. Without a logging object (a
LiteLLM path that passes none) the call id keys the state, as before, and the latest ``size`` are kept.
"""

from __future__ import annotations

import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

FIELD = "akto_hook_call_key"
# Calls keyed by call id (no logging object) whose state is kept; bounded so it cannot grow with traffic.
BY_ID_MEMORY = 10_000

V = TypeVar("V")


class CallKey:
    """A call's key, made by :func:`key_of`; equal only to itself."""

    __slots__ = ("__weakref__", "hex")

    def __init__(self) -> None:
        self.hex = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"CallKey({self.hex})"

    # Copies of LiteLLM's logging kwargs (a logger that deep-copies them) keep the call's key.
    def __copy__(self) -> CallKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> CallKey:
        return self


Key = CallKey | str


def _by_call_id(call_id: Any) -> str:
    return f"litellm_call_id:{call_id}"


def key_of(data: Mapping[str, Any]) -> Key:
    """The key of the call whose request ``data`` a pre-call, during_call or post-call hook holds;
    made on the first call and the same for every later hook of that call."""
    details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
    if not isinstance(details, dict):
        return _by_call_id(data.get("litellm_call_id"))
    key = details.get(FIELD)
    if not isinstance(key, CallKey):
        key = CallKey()
        details[FIELD] = key
    return key


def logged_key(kwargs: Mapping[str, Any]) -> Key:
    """The key of the call a logging callback's ``kwargs`` describe (:func:`key_of`'s, when a hook made one)."""
    key = kwargs.get(FIELD)
    return key if isinstance(key, CallKey) else _by_call_id(kwargs.get("litellm_call_id"))


class PerCall(Generic[V]):
    """A value per call: by a :class:`CallKey`, for as long as the call holds the key; by call id,
    the latest ``size``."""

    def __init__(self, size: int = BY_ID_MEMORY) -> None:
        self._live: weakref.WeakKeyDictionary[CallKey, V] = weakref.WeakKeyDictionary()
        self._by_id: OrderedDict[str, V] = OrderedDict()
        self._size = size

    def __setitem__(self, key: Key, value: V) -> None:
        if isinstance(key, CallKey):
            self._live[key] = value
            return
        self._by_id[key] = value
        self._by_id.move_to_end(key)
        if len(self._by_id) > self._size:
            self._by_id.popitem(last=False)

    def __contains__(self, key: Key) -> bool:
        return key in (self._live if isinstance(key, CallKey) else self._by_id)

    def __len__(self) -> int:
        return len(self._live) + len(self._by_id)

    def get(self, key: Key) -> V | None:
        return self._live.get(key) if isinstance(key, CallKey) else self._by_id.get(key)

    def pop(self, key: Key) -> V | None:
        return self._live.pop(key, None) if isinstance(key, CallKey) else self._by_id.pop(key, None)
