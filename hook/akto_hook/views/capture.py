"""Turning what LiteLLM hands a callback into a :class:`Record`.

LiteLLM gives the pre-call hook the request ``data`` dict, and the logging callbacks a ``kwargs`` dict
whose ``litellm_params.proxy_server_request`` holds the client's request and whose
``standard_logging_object`` holds the assembled response (a streamed one too) or the error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from akto_ingest.config import OnFlagged
from akto_ingest.record import Record

from .. import metrics, views
from . import attachments

log = logging.getLogger("akto_hook")


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty one: LiteLLM's kwargs hold None or other types where
    a dict is usual."""
    return value if isinstance(value, dict) else {}


# Identity tags: record metadata key -> the key LiteLLM's auth puts in the request's metadata.
IDENTITY_KEYS = {
    "user_id": "user_api_key_user_id",
    "user_email": "user_api_key_user_email",
    "team_id": "user_api_key_team_id",
    "team_alias": "user_api_key_team_alias",
    "key_alias": "user_api_key_alias",
    "end_user_id": "user_api_key_end_user_id",
}


def _metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    wanted = {key: meta.get(source) for key, source in IDENTITY_KEYS.items()}
    return {key: str(value) for key, value in wanted.items() if value is not None and value != ""}


def _session(*candidates: Any) -> str | None:
    """The first session id given. LiteLLM sets ``litellm_session_id`` (and metadata ``session_id``)
    from ``x-litellm-session-id`` / ``metadata.session_id``, and metadata ``trace_id`` from
    ``x-litellm-trace-id``; the trace id it makes up for every other request is not a session."""
    return next((str(value) for value in candidates if value), None)


def _path(request: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    url = request.get("url")
    if isinstance(url, str) and url:
        return urlparse(url).path or "/"
    route = meta.get("user_api_key_request_route")
    return route if isinstance(route, str) and route else "/v1/chat/completions"


def _base(
    *,
    call_id: Any,
    mode: OnFlagged,
    request: Mapping[str, Any],
    meta: Mapping[str, Any],
    fallback: Mapping[str, Any],
    strict: bool,
) -> dict[str, Any]:
    return {
        "id": str(call_id or uuid.uuid4()),
        "mode": mode,
        "path": _path(request, meta),
        "method": str(request.get("method") or "POST"),
        "request_headers": as_dict(request.get("headers")),
        "request_body": views.request_body(as_dict(request.get("body")) or fallback, strict=strict),
        "client_ip": str(meta.get("requester_ip_address") or "127.0.0.1"),
        "session_id": _session(meta.get("session_id"), meta.get("trace_id")),
        "metadata": _metadata(meta),
    }


def from_request(data: Mapping[str, Any], mode: OnFlagged, *, strict: bool = True) -> Record:
    """The record of a request as the pre-call hook sees it (no response yet). ``strict``: a value
    the view cannot read raises :class:`views.Unreadable` (a request check must not pass it); else it
    is named in the record (the response check, whose subject is the response)."""
    # Chat keeps LiteLLM's metadata in "metadata"; /v1/messages and /v1/responses in "litellm_metadata",
    # where "metadata" is the client's own (Anthropic's metadata.user_id, for one).
    meta = {**as_dict(data.get("metadata")), **as_dict(data.get("litellm_metadata"))}
    request = as_dict(data.get("proxy_server_request"))
    # What the LLM gets wins: LiteLLM rewrites ``data`` before the guardrails run (a prompt template's
    # messages replace the client's), while ``proxy_server_request`` keeps the original. A field only
    # the original has is checked too.
    request = {**request, "body": {**as_dict(request.get("body")), **data}}
    base = _base(
        call_id=data.get("litellm_call_id"), mode=mode, request=request, meta=meta, fallback=data, strict=strict
    )
    base["session_id"] = _session(data.get("litellm_session_id"), base["session_id"])
    return Record(**base)


def _from_log(kwargs: Mapping[str, Any], mode: OnFlagged) -> dict[str, Any]:
    params = as_dict(kwargs.get("litellm_params"))
    slo = as_dict(kwargs.get("standard_logging_object"))
    meta = {**as_dict(params.get("metadata")), **as_dict(slo.get("metadata"))}
    request = as_dict(params.get("proxy_server_request"))
    # LiteLLM as a library has no client request: the call's model, messages and params stand for it.
    fallback = {
        "model": kwargs.get("model"),
        "messages": kwargs.get("messages") or slo.get("messages"),
        **as_dict(kwargs.get("optional_params")),
    }
    # A record is kept whatever it holds: a value it cannot read is named, not a reason to drop it.
    base = _base(
        call_id=kwargs.get("litellm_call_id"), mode=mode, request=request, meta=meta, fallback=fallback, strict=False
    )
    base["session_id"] = _session(params.get("litellm_session_id"), slo.get("session_id"), base["session_id"])
    if not meta.get("requester_ip_address") and slo.get("requester_ip_address"):
        base["client_ip"] = str(slo["requester_ip_address"])
    if "end_user_id" not in base["metadata"] and slo.get("end_user"):
        base["metadata"]["end_user_id"] = str(slo["end_user"])
    return base


def from_success(kwargs: Mapping[str, Any], response: Any, mode: OnFlagged) -> Record:
    """The record of a completed call; a streamed response arrives here once, assembled."""
    slo = as_dict(kwargs.get("standard_logging_object"))
    body = slo.get("response")
    if not isinstance(body, dict):
        body = response.model_dump() if hasattr(response, "model_dump") else {}
    return Record(**_from_log(kwargs, mode), response_body=attachments.summarized_response(body), status_code=200)


def from_failure(kwargs: Mapping[str, Any], mode: OnFlagged) -> Record:
    """The record of a call that failed at the LLM, with the error status the client got."""
    slo = as_dict(kwargs.get("standard_logging_object"))
    error = as_dict(slo.get("error_information"))
    exception = kwargs.get("exception")
    status = _status(error.get("error_code")) or _status(getattr(exception, "status_code", None)) or 500
    message = error.get("error_message") or str(exception or "LLM call failed")
    return Record(
        **_from_log(kwargs, mode),
        response_body={"error": {"message": str(message), "code": str(status)}},
        status_code=status,
    )


def _status(value: Any) -> int | None:
    try:
        status = int(value)
    except (TypeError, ValueError):
        return None
    return status if 100 <= status <= 599 else None


def built_or_logged(build: Callable[[], Record], kwargs: Mapping[str, Any]) -> Record | None:
    """Build a logging callback's record; None (logged and counted) when capture itself fails.

    LiteLLM swallows exceptions from logging callbacks, so a capture bug must at least be loud.
    """
    try:
        return build()
    except Exception:
        metrics.CAPTURE_FAILURES.inc()
        call_id = kwargs.get("litellm_call_id")
        log.exception("akto record could not be built call_id=%s", call_id, extra={"call_id": call_id})
        return None
