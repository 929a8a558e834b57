"""Akto's wire format, built here and nowhere else: the mirroring envelope, query flags and verdicts.

See Akto's data-ingestion and guardrails services: every envelope value is a string, the request
body is wrapped as ``{"body": "<json>"}``, and verdict keys change case between Akto versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .config import AktoSettings
from .errors import AktoBadResponse, RecordTooLarge
from .record import Record

MESSAGE_ID_HEADER = "x-akto-installer-akto_message_id"
SESSION_ID_HEADER = "x-akto-installer-akto_session_id"

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one of Akto's endpoints accepts: any single string, and the whole request body."""

    endpoint: str
    max_string_bytes: int
    max_body_bytes: int


# Akto's http-proxy refuses a body over 2 MiB or any string over 256 KiB; ingestData takes 10 MiB a
# body and 5 MiB a string. A record past http-proxy's limits is delivered through ingestData; only
# past ingestData's is it dead-lettered, since no endpoint would ever accept it.
HTTP_PROXY_LIMITS = Limits("/api/http-proxy", 256 * 1024, 2 * MIB)
INGEST_DATA_LIMITS = Limits("/api/ingestData", 5 * MIB, 10 * MIB)

MAX_STRING_BYTES = HTTP_PROXY_LIMITS.max_string_bytes
MAX_RECORD_BYTES = HTTP_PROXY_LIMITS.max_body_bytes
MAX_BATCH_BYTES = INGEST_DATA_LIMITS.max_body_bytes

BLOCKING_BEHAVIOURS = frozenset({"block", ""})


def envelope(record: Record, akto: AktoSettings) -> dict[str, str]:
    """The one JSON object Akto ingests for a record (every value a string)."""
    headers = dict(record.request_headers)
    headers[MESSAGE_ID_HEADER] = record.id
    if record.session_id:
        headers[SESSION_ID_HEADER] = record.session_id
    if record.blocked_reason is not None:
        response: dict[str, Any] = {"x-blocked-by": "Akto Guardrails", "reason": record.blocked_reason}
        # Akto's own names for its verdict's Metadata, so the record says which policy and rule blocked.
        details = {
            "policy_name": record.blocked_policy,
            "rule_violated": record.blocked_rule,
            "severity": record.blocked_severity,
        }
        response.update({key: value for key, value in details.items() if value})
    else:
        response = record.response_body or {}
    status = str(record.status_code)
    body = {
        "path": record.path,
        "method": record.method,
        "requestHeaders": _text(headers),
        "responseHeaders": _text(record.response_headers),
        "requestPayload": _text({"body": _text(record.request_body)}),
        "responsePayload": _text(response),
        "statusCode": status,
        "status": status,
        "time": str(record.created_ms),
        "ip": record.client_ip,
        "destIp": "127.0.0.1",
        "type": "HTTP/1.1",
        "akto_account_id": akto.akto_account_id,
        "akto_vxlan_id": akto.akto_vxlan_id,
        "is_pending": "false",
        "source": "MIRRORING",
        "tag": _text(_tag(record)),
        "metadata": _text(record.metadata),
        "contextSource": akto.context_source,
    }
    if akto.akto_metadata:
        body["akto_metadata"] = _text(akto.akto_metadata)
    return body


def _tag(record: Record) -> dict[str, str]:
    """Akto's traffic tags: an MCP tool call (metadata ``mcp_server_name``) is tagged as Akto's own MCP
    connectors tag it, with its server and tool; everything else is Gen AI traffic."""
    server = record.metadata.get("mcp_server_name")
    if server is None:
        return {"gen-ai": "Gen AI"}
    return {
        "mcp-server": "MCP Server",
        "mcp-client": "litellm",
        "mcp_server_name": server,
        "tool_name": record.metadata.get("tool_name", ""),
        "call_type": record.metadata.get("call_type", "tool_call"),
    }


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode(body: dict[str, str], limits: Limits = HTTP_PROXY_LIMITS) -> bytes:
    """The envelope as sent, encoded once; raises :class:`RecordTooLarge` when ``limits``' endpoint
    would refuse it (http-proxy's by default)."""
    encoded = orjson.dumps(body)
    problem = too_large(body, encoded, limits)
    if problem:
        raise RecordTooLarge(problem)
    return encoded


def too_large(body: dict[str, str], encoded: bytes, limits: Limits) -> str:
    """Why ``limits``' endpoint would refuse this envelope (``encoded`` is its :func:`encode` output),
    or ``""`` when it fits. Through ingestData a record travels inside a batch body, with the
    publish flag, so that wrapper counts against the body limit."""
    for key, value in body.items():
        if len(value) * 4 > limits.max_string_bytes and len(value.encode()) > limits.max_string_bytes:
            return (
                f"field {key} is {len(value.encode())} bytes; "
                f"Akto's {limits.endpoint} accepts {limits.max_string_bytes}"
            )
    size = len(encoded)
    if limits.endpoint == INGEST_DATA_LIMITS.endpoint:
        size += len(BATCH_PREFIX) + len(BATCH_SUFFIX) + len(PUBLISH_FLAG)
    if size > limits.max_body_bytes:
        return f"record is {size} bytes; Akto's {limits.endpoint} accepts {limits.max_body_bytes}"
    return ""


def check_size(body: dict[str, str]) -> int:
    """The envelope's encoded size; raises :class:`RecordTooLarge` when http-proxy would refuse it."""
    return len(encode(body))


def http_proxy_params(
    *, check_request: bool, check_response: bool, ingest: bool, check_files: bool = False
) -> dict[str, str]:
    params = {"akto_connector": "litellm"}
    if check_request:
        params["guardrails"] = "true"
    if check_response:
        params["response_guardrails"] = "true"
    if ingest:
        params["ingest_data"] = "true"
    if check_files:
        params["file_guardrails"] = "true"
    return params


def files_body(record: Record, akto: AktoSettings, files: list[dict[str, str]]) -> bytes:
    """An ``/api/http-proxy`` body (sent with ``file_guardrails=true``) asking Akto's file guardrail
    about ``files``: the record's envelope with an empty ``requestPayload`` (the text is checked on its
    own) and a ``files`` list, each ``{"filename", "type": image|audio|file}`` with either ``content``
    (standard base64) or ``url``. This is the shape LiteLLM's built-in Akto guardrail sends; Akto
    answers with the usual ``guardrailsResult``. Raises :class:`RecordTooLarge` past http-proxy's
    body limit."""
    body: dict[str, Any] = {**envelope(record.model_copy(update={"request_body": {}}), akto), "requestPayload": "{}"}
    body["files"] = files
    encoded = orjson.dumps(body)
    if len(encoded) > HTTP_PROXY_LIMITS.max_body_bytes:
        raise RecordTooLarge(
            f"attachments are {len(encoded)} bytes with their envelope; "
            f"Akto's {HTTP_PROXY_LIMITS.endpoint} accepts {HTTP_PROXY_LIMITS.max_body_bytes}"
        )
    return encoded


BATCH_PREFIX = b'{"batchData":['
BATCH_SUFFIX = b"]}"
# Spliced into an encoded envelope (before its closing brace) to have Akto check it asynchronously.
PUBLISH_FLAG = b',"publishToGuardrails":true'


def batch_body(encoded: list[bytes]) -> bytes:
    """An ``/api/ingestData`` body from envelopes already encoded by :func:`encode`."""
    return BATCH_PREFIX + b",".join(encoded) + BATCH_SUFFIX


def with_publish_flag(encoded: bytes) -> bytes:
    return encoded[:-1] + PUBLISH_FLAG + b"}"


@dataclass(frozen=True)
class Verdict:
    """Akto's guardrail answer for one record."""

    allowed: bool
    reason: str
    behaviour: str
    # Akto's gateway answers "allowed" with failOpen when its own guardrail engine failed: no
    # verdict was made, and ``error`` says why.
    fail_open: bool = False
    error: str = ""
    # Akto's ``Metadata``: which policy and rule decided, and how severe (empty when not given).
    policy: str = ""
    rule: str = ""
    severity: str = ""
    # Masking: ``Modified: true`` with the whole rewritten ``requestPayload`` (or, for a response
    # check, ``responsePayload``) string; None when Akto changed nothing.
    modified_payload: str | None = None

    @property
    def blocks(self) -> bool:
        """True only for a block verdict: ``alert`` and ``warn`` are flagged but must pass."""
        return not self.allowed and self.behaviour in BLOCKING_BEHAVIOURS

    @property
    def flagged(self) -> bool:
        return not self.allowed


ALLOW = Verdict(allowed=True, reason="", behaviour="")


def _pick(result: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` that ``result`` holds a value for: a null stands for a field not sent."""
    for name in names:
        if result.get(name) is not None:
            return result[name]
    return None


def _boolean(result: dict[str, Any], *names: str) -> bool | None:
    """A flag of Akto's verdict, or None when absent or null. Read as truthy, a text such as "false"
    would turn a refusal into an allow, so anything but a JSON boolean is an unreadable answer; so are
    two casings of one flag that disagree (Akto's fail-open verdict sends both), since either could
    be the one meant."""
    values = [result[name] for name in names if result.get(name) is not None]
    for value in values:
        if not isinstance(value, bool):
            raise AktoBadResponse(f"guardrailsResult {names[0]} is {type(value).__name__}, not a boolean")
    if len(set(values)) > 1:
        raise AktoBadResponse(f"guardrailsResult {names[0]} is both true and false in its two casings")
    return values[0] if values else None


def parse_verdict(body: Any) -> Verdict:
    """Read a verdict from an http-proxy answer; no ``guardrailsResult`` means allow (no check ran).

    A ``guardrailsResult`` is a verdict only with a boolean ``Allowed``: Akto sends it in every
    verdict, its fail-open one included, so one without it (missing or null) says nothing and is an
    unreadable answer (:class:`AktoBadResponse`, which ``unreachable_fallback`` decides), never an
    allow. ``behaviour`` is read without case or surrounding spaces."""
    if not isinstance(body, dict):
        raise AktoBadResponse(f"expected a JSON object, got {type(body).__name__}")
    data = body.get("data")
    result = data.get("guardrailsResult") if isinstance(data, dict) else None
    if result is None:
        return ALLOW
    if not isinstance(result, dict):
        raise AktoBadResponse("guardrailsResult is not an object")
    allowed = _boolean(result, "Allowed", "allowed")
    if allowed is None:
        raise AktoBadResponse("guardrailsResult has no Allowed: a verdict that says nothing is not an allow")
    reason = _pick(result, "Reason", "reason") or ""
    behaviour = _pick(result, "behaviour", "Behaviour", "behavior") or ""
    fail_open = _boolean(result, "failOpen", "FailOpen", "fail_open") is True
    error = str(_pick(result, "error", "Error") or "") if fail_open else ""
    meta = _pick(result, "Metadata", "metadata")
    meta = meta if isinstance(meta, dict) else {}
    modified = _boolean(result, "Modified", "modified")
    payload = _pick(result, "ModifiedPayload", "modifiedPayload", "modified_payload")
    if modified and not (isinstance(payload, str) and payload):
        # Akto masked something we cannot read: an empty payload is a mask that cannot be applied,
        # so the unmasked text is refused rather than sent on.
        payload = ""
    return Verdict(
        allowed=allowed,
        reason=str(reason),
        behaviour=str(behaviour).strip().lower(),
        fail_open=fail_open,
        error=error,
        policy=str(meta.get("policy_name") or ""),
        rule=str(meta.get("rule_violated") or ""),
        severity=str(meta.get("severity") or "").lower(),
        modified_payload=payload if modified else None,
    )
