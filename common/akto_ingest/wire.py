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

# Akto's http-proxy rejects a body over about 2 MiB or any string over 256 KiB; ingestData takes
# 10 MiB per call. A record over these can never be accepted, so it is dead-lettered, not sent.
MAX_STRING_BYTES = 256 * 1024
MAX_RECORD_BYTES = 2 * 1024 * 1024
MAX_BATCH_BYTES = 10 * 1024 * 1024

BLOCKING_BEHAVIOURS = frozenset({"block", ""})


def envelope(record: Record, akto: AktoSettings) -> dict[str, str]:
    """The one JSON object Akto ingests for a record (every value a string)."""
    headers = dict(record.request_headers)
    headers[MESSAGE_ID_HEADER] = record.id
    if record.session_id:
        headers[SESSION_ID_HEADER] = record.session_id
    if record.blocked_reason is not None:
        response: dict[str, Any] = {"x-blocked-by": "Akto Guardrails", "reason": record.blocked_reason}
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
        "tag": _text({"gen-ai": "Gen AI"}),
        "metadata": _text(record.metadata),
        "contextSource": akto.context_source,
    }
    if akto.akto_metadata:
        body["akto_metadata"] = _text(akto.akto_metadata)
    return body


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode(body: dict[str, str]) -> bytes:
    """The envelope as sent, encoded once; raises :class:`RecordTooLarge` when Akto would refuse it."""
    for key, value in body.items():
        if len(value) * 4 > MAX_STRING_BYTES and len(value.encode()) > MAX_STRING_BYTES:
            raise RecordTooLarge(f"field {key} is {len(value.encode())} bytes; Akto accepts {MAX_STRING_BYTES}")
    encoded = orjson.dumps(body)
    if len(encoded) > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"record is {len(encoded)} bytes; Akto accepts {MAX_RECORD_BYTES}")
    return encoded


def check_size(body: dict[str, str]) -> int:
    """The envelope's encoded size; raises :class:`RecordTooLarge` when Akto would refuse it."""
    return len(encode(body))


def http_proxy_params(*, check_request: bool, check_response: bool, ingest: bool) -> dict[str, str]:
    params = {"akto_connector": "litellm"}
    if check_request:
        params["guardrails"] = "true"
    if check_response:
        params["response_guardrails"] = "true"
    if ingest:
        params["ingest_data"] = "true"
    return params


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

    @property
    def blocks(self) -> bool:
        """True only for a block verdict: ``alert`` and ``warn`` are flagged but must pass."""
        return not self.allowed and self.behaviour in BLOCKING_BEHAVIOURS

    @property
    def flagged(self) -> bool:
        return not self.allowed


ALLOW = Verdict(allowed=True, reason="", behaviour="")


def _pick(result: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in result:
            return result[name]
    return None


def parse_verdict(body: Any) -> Verdict:
    """Read a verdict from an http-proxy answer; no ``guardrailsResult`` means allow."""
    if not isinstance(body, dict):
        raise AktoBadResponse(f"expected a JSON object, got {type(body).__name__}")
    data = body.get("data")
    result = data.get("guardrailsResult") if isinstance(data, dict) else None
    if result is None:
        return ALLOW
    if not isinstance(result, dict):
        raise AktoBadResponse("guardrailsResult is not an object")
    allowed = _pick(result, "Allowed", "allowed")
    if allowed is None:
        return ALLOW
    reason = _pick(result, "Reason", "reason") or ""
    behaviour = _pick(result, "behaviour", "Behaviour", "behavior") or ""
    fail_open = _pick(result, "failOpen", "FailOpen", "fail_open") is True
    error = str(_pick(result, "error", "Error") or "") if fail_open else ""
    return Verdict(
        allowed=bool(allowed), reason=str(reason), behaviour=str(behaviour).lower(), fail_open=fail_open, error=error
    )
