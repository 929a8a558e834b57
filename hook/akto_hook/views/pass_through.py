"""Pass-through routes: what the route forwards, not only what LiteLLM shows the guardrail.

On a ``pass_through_endpoints`` route LiteLLM hands guardrails the JSON body alone: ``{}`` for a
``multipart/form-data`` or url-encoded form, and nothing of the query string; it then forwards the
form and the query as they came. Its ``pass_through_request`` (1.81 to 1.110) holds the Starlette
request as ``request`` and awaits the guardrail in the same task, so :func:`forwarded_request` finds
it on the call stack, and the check reads the form and the query too. Where the request cannot be
found (a guardrail LiteLLM runs in a task of its own, a LiteLLM that renamed the function), an empty
body is unreadable rather than clean: what the guardrail cannot see is never passed as checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from akto_ingest.config import OnFlagged
from akto_ingest.record import Record

from .body import Unreadable, request_body
from .capture import from_request
from .redact import REDACTED

CALL_TYPE = "pass_through_endpoint"
# The one key of what LiteLLM gives guardrails for a WebSocket pass-through: its streaming marker.
WEBSOCKET_MARKER = "litellm_server_streaming_classification"
# LiteLLM's function that forwards a pass-through request; its request argument is ``request``.
FORWARDER = "pass_through_request"
# Content types whose body LiteLLM forwards as a form rather than JSON.
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
# Query parameters that carry a credential under a name no body uses for one (Google's ``?key=``,
# a signed URL's signature); the usual names (``api_key``, ``token``...) are redacted as in a body.
QUERY_CREDENTIALS = frozenset({"key", "sig", "signature", "x-goog-api-key", "x-amz-signature", "x-amz-credential"})


def is_pass_through(call_type: Any) -> bool:
    """True for a request on one of the proxy's ``pass_through_endpoints``."""
    return str(getattr(call_type, "value", call_type)) == CALL_TYPE


def forwarded_request() -> Any | None:
    """The Starlette request LiteLLM is forwarding, found on the caller's stack; None when not there."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == FORWARDER:
            request = frame.f_locals.get("request")
            return request if hasattr(request, "query_params") and hasattr(request, "form") else None
        frame = frame.f_back
    return None


async def forwarded(request: Any | None) -> dict[str, Any] | None:
    """What ``request`` forwards beside the JSON LiteLLM shows guardrails: its ``query`` and its
    ``form`` (fields as text, files as files); ``{}`` when nothing, None without a request.

    Starlette keeps the parsed form on the request, so LiteLLM forwards this same form afterwards.
    """
    if request is None:
        return None
    parts: dict[str, Any] = {}
    if request.query_params:
        query = _grouped(request.query_params.multi_items())
        parts["query"] = {name: REDACTED if name.lower() in QUERY_CREDENTIALS else v for name, v in query.items()}
    if request.headers.get("content-type", "").lower().startswith(FORMS):
        try:
            form = await request.form()
        except Exception as exc:
            raise Unreadable(f"the pass-through request's form cannot be read: {exc}") from None
        parts["form"] = _grouped(form.multi_items())
    return parts


def from_pass_through(data: Mapping[str, Any], mode: OnFlagged, parts: Mapping[str, Any] | None) -> Record:
    """The record a pass-through request is checked as: its JSON body, or, where the route also
    forwards a query string or a form, ``{"body": ..., "query": ..., "form": ...}``.

    Raises :class:`Unreadable` for an empty body whose request could not be found (``parts`` None):
    the route may be forwarding a form the check cannot see.
    """
    record = from_request(data, mode)
    if parts is None:
        if not record.request_body:
            raise Unreadable(
                "LiteLLM gave the guardrail no body for this pass-through request, and the request it "
                "forwards could not be found; what the route forwards cannot be checked"
            )
        return record
    if not parts:
        return record
    extra = request_body(parts)
    body = {"body": record.request_body, **extra} if record.request_body else extra
    return record.model_copy(update={"request_body": body})


def _grouped(items: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Multi-items as a dict: a name given once maps to its value, one given more often to a list."""
    grouped: dict[str, list[Any]] = {}
    for name, value in items:
        grouped.setdefault(str(name), []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}
