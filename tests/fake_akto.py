"""A fake Akto server speaking the wire format of Akto's ingestion and guardrail API.

Built from ``shared/reference/akto-api.md``. Used in-process by tests::

    async with FakeAkto(api_key="k") as akto:
        ...  # point the client at akto.url
        assert akto.records[0].body["path"] == "/v1/chat/completions"

or as a separate process for demos and soak runs::

    python tests/fake_akto.py --port 8787 [--api-key KEY] [--host 127.0.0.1]

and then driven over HTTP through the ``/_admin/*`` endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

from aiohttp import web

Endpoint = Literal["http-proxy", "ingestData"]
KeyCase = Literal["upper", "lower"]

MIB: Final = 1024 * 1024
HTTP_PROXY_MAX_BODY: Final = 2 * MIB
HTTP_PROXY_MAX_STRING: Final = 256 * 1024
INGEST_MAX_BODY: Final = 10 * MIB
INGEST_MAX_STRING: Final = 5 * MIB

MESSAGE_ID_HEADER: Final = "x-akto-installer-akto_message_id"
SUCCESS_MESSAGE: Final = "Request processed successfully"

DEFAULT_TRIGGERS: Final[Mapping[str, str]] = {
    "ignore previous instructions": "Prompt injection detected",
    "my ssn is": "PII detected",
}

# Real Akto only sends "block"/"alert"/"warn"/"approval"/""; "empty" is accepted as
# a spelling of "" because an empty string is awkward to pass on a command line.
_EMPTY_BEHAVIOUR_ALIAS: Final = "empty"

_UNAUTHORIZED_HTML: Final = (
    b"<!doctype html><html><head><title>401 Unauthorized</title></head><body><h1>Unauthorized</h1></body></html>"
)
# Content-Type claims JSON on purpose: the nastier case for a client is a body that
# lies about being JSON, not one that is honestly text.
_GARBAGE_BODY: Final = b"<html>502 upstream returned something that is not JSON"

# What Akto's gateway answers when its own guardrail engine fails, times out or answers garbage
# (GuardrailsClient.buildFailOpenResponse): an "allowed" verdict that is no verdict at all.
FAIL_OPEN_ERROR: Final = "guardrails service unavailable: timed out after 3000ms"

# aiohttp waits this long for in-flight handlers on stop(); ours wake up at once, so
# this only bounds the damage if one does not.
_SHUTDOWN_TIMEOUT_S: Final = 0.5
# Hanging handlers also re-check settings this often, so that a test mutating
# ``behaviour.hang`` directly (bypassing configure()) still releases them.
_HANG_RECHECK_S: Final = 0.25


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(slots=True)
class Settings:
    """Fault-injection and verdict settings; see ``FakeAkto.configure``."""

    delay_ms: int = 0
    status: int | None = None
    fail_next: int = 0
    hang: bool = False
    garbage: bool = False
    fail_open: bool = False
    behaviour: str = "block"
    triggers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TRIGGERS))
    key_case: KeyCase = "upper"
    # Attached to flagged verdicts as Akto's ``Metadata`` (policy_name, rule_violated, severity).
    metadata: dict[str, str] = field(default_factory=dict)
    # phrase -> replacement: an unflagged payload containing a phrase (case-insensitive) is answered
    # Allowed with ``Modified: true`` and the payload rewritten, as Akto's masking policies do.
    masks: dict[str, str] = field(default_factory=dict)
    # A guardrailsResult sent as it is to every guardrail check, whatever it says: the answers real
    # Akto should never give (a null Allowed, a behaviour with spaces), to see what a client makes of them.
    verdict: dict[str, object] | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "delay_ms": self.delay_ms,
            "status": self.status,
            "fail_next": self.fail_next,
            "hang": self.hang,
            "garbage": self.garbage,
            "fail_open": self.fail_open,
            "behaviour": self.behaviour,
            "triggers": dict(self.triggers),
            "key_case": self.key_case,
            "metadata": dict(self.metadata),
            "masks": dict(self.masks),
            "verdict": None if self.verdict is None else dict(self.verdict),
        }


def _validated(updates: Mapping[str, object]) -> dict[str, object]:
    """Check a settings update as a whole, so a bad key leaves nothing half-applied."""
    out: dict[str, object] = {}
    for name, value in updates.items():
        if name in ("delay_ms", "fail_next"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
            out[name] = value
        elif name == "status":
            if value is None or value == 0:
                out[name] = None
            elif not isinstance(value, int) or isinstance(value, bool) or not 400 <= value <= 599:
                raise ValueError("status must be null or an HTTP status 400-599")
            else:
                out[name] = value
        elif name in ("hang", "garbage", "fail_open"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean")
            out[name] = value
        elif name == "behaviour":
            if not isinstance(value, str):
                raise ValueError("behaviour must be a string")
            out[name] = "" if value == _EMPTY_BEHAVIOUR_ALIAS else value
        elif name == "triggers":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError("triggers must map non-empty phrases to reasons")
            out[name] = {str(k): str(v) for k, v in value.items()}
        elif name in ("metadata", "masks"):
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"{name} must map non-empty strings to strings")
            out[name] = {str(k): str(v) for k, v in value.items()}
        elif name == "verdict":
            if value is not None and not isinstance(value, Mapping):
                raise ValueError("verdict must be null or a JSON object")
            out[name] = None if value is None else dict(value)
        elif name == "key_case":
            if value not in ("upper", "lower"):
                raise ValueError('key_case must be "upper" or "lower"')
            out[name] = value
        else:
            raise ValueError(f"unknown setting {name!r}")
    return out


@dataclass(slots=True, frozen=True)
class AktoRecord:
    """One envelope as Akto received it (an ``ingestData`` batch yields several)."""

    endpoint: Endpoint
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: int
    message_id: str | None
    # Only ingested records count towards message-id duplicates: a guardrail-only
    # check (no ingest_data=true) stores nothing in real Akto, so a later ingest of
    # the same call is not a duplicate.
    ingested: bool

    def to_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "received_at": self.received_at,
            "message_id": self.message_id,
            "ingested": self.ingested,
        }


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    note: str = ""
    message_id: str | None = None
    # What to store once the answer is ready to go: envelopes, and whether they count as ingested.
    to_store: tuple[list[dict[str, Any]], bool] | None = None


class _Rejected(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _message_id(envelope: Mapping[str, Any]) -> str | None:
    raw = envelope.get("requestHeaders")
    # Substring test first: most records parse cheaply, but skipping the JSON
    # decode when the id cannot be there keeps big header blobs off the hot path.
    if not isinstance(raw, str) or MESSAGE_ID_HEADER not in raw:
        return None
    try:
        headers = json.loads(raw)
    except ValueError:
        return None
    value = headers.get(MESSAGE_ID_HEADER) if isinstance(headers, dict) else None
    return value if isinstance(value, str) and value else None


def _check_envelope(envelope: object, max_string: int, *, allow_bool: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(envelope, dict):
        raise _Rejected(422, "record must be a JSON object")
    for key, value in envelope.items():
        # LiteLLM's built-in Akto client sends some fields as null; Akto treats them as absent.
        if value is None:
            continue
        if isinstance(value, str):
            # Akto's limit is on bytes: measure UTF-8, which only costs anything for long strings.
            if len(value) * 4 > max_string and len(value.encode(errors="surrogatepass")) > max_string:
                raise _Rejected(422, f"field {key!r} exceeds {max_string} bytes")
        elif not (key in allow_bool and isinstance(value, bool)):
            raise _Rejected(422, f"field {key!r} must be a string")
    if not envelope.get("requestPayload"):
        raise _Rejected(422, "requestPayload is missing or empty")
    return envelope


async def _read_limited(request: web.Request, limit: int) -> bytes:
    # Read by hand instead of request.read() so each endpoint enforces its own
    # limit rather than one app-wide client_max_size.
    if request.content_length is not None and request.content_length > limit:
        raise _Rejected(413, f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise _Rejected(413, f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _Rejected(422, f"body is not valid JSON: {exc}") from None


def _fail_open_verdict() -> dict[str, object]:
    return {
        "Allowed": True,
        "allowed": True,
        "Modified": False,
        "modified": False,
        "ModifiedPayload": "",
        "Reason": "",
        "reason": "",
        "Behaviour": "",
        "behaviour": "",
        "failOpen": True,
        "error": FAIL_OPEN_ERROR,
    }


def _error_body(endpoint: Endpoint, message: str, error: str) -> bytes:
    if endpoint == "ingestData":
        return _json_bytes({"actionErrors": [error]})
    return _json_bytes({"success": False, "message": message, "data": {"error": error}})


class FakeAkto:
    """In-process (or standalone) fake of Akto's ``/api/http-proxy`` and ``/api/ingestData``.

    Records every accepted envelope, answers guardrail verdicts from configurable
    trigger phrases, and injects faults (delay, fixed status, N failures, hang,
    garbage bodies). ``stop()``/``start()`` simulates Akto being down; the port is
    kept, so a restart comes back on the same URL.

    Settings (``configure(**settings)`` or ``POST /_admin/config``):

    - ``delay_ms``: answer every Akto request after this many milliseconds.
    - ``status``: answer every Akto request with this status (400-599); ``None``
      clears it. Nothing is recorded.
    - ``fail_next``: answer 503 to the next N requests, then recover.
    - ``hang``: accept, but never answer (nor store) until cleared or ``stop()``.
    - ``garbage``: accept and store, answer 200 with a non-JSON body.
    - ``fail_open``: accept and store, answer every guardrail check with the verdict Akto's
      gateway builds when its guardrail engine fails (``failOpen: true``, allowed, an ``error``).
    - ``behaviour``: ``behaviour`` field of flagged verdicts (``block``, ``alert``,
      ``warn``, ``approval``, or ``""``/``"empty"``).
    - ``triggers``: phrase -> reason; a payload containing a phrase
      (case-insensitive) is flagged with that reason.
    - ``key_case``: ``"upper"`` (``Allowed``/``Reason``/``behaviour``) or
      ``"lower"`` (``allowed``/``reason``/``Behaviour``).
    - ``metadata``: Akto's ``Metadata`` on flagged verdicts (``policy_name``, ``rule_violated``,
      ``severity``); empty sends none.
    - ``masks``: phrase -> replacement; an unflagged checked payload containing a phrase is answered
      allowed with ``Modified: true`` and ``ModifiedPayload`` the payload string rewritten.
    - ``verdict``: a JSON object answered as the ``guardrailsResult`` of every guardrail check, as it
      is (over ``fail_open``, triggers and masks); ``None`` clears it.

    A file guardrail check (``/api/http-proxy?file_guardrails=true`` with a ``files`` list) is judged
    on its files' decoded bytes by the same triggers and masks, and stored as not ingested.

    A record is stored when its answer is ready to go out: after ``delay_ms`` and any ``hang``, and
    only if the client is still connected then. So a record whose sender gave up or died while Akto
    was still working on it (a client timeout, a SIGKILLed worker) is not counted as delivered; it is
    counted in ``abandoned``.

    Faults apply to the Akto endpoints only, never to ``/_admin/*``. Records and
    settings survive ``stop()``/``start()``; ``reset()`` clears both. Message-id
    counts (``message_ids()``, duplicates) cover ingested records only:
    ``ingestData`` batches and ``http-proxy`` calls with ``ingest_data=true``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.log_requests = log_requests
        self.behaviour = Settings()
        self._port = port
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._down_task: asyncio.Task[None] | None = None
        # Created only while someone waits, so the hot path pays one None check.
        self._arrived: asyncio.Event | None = None
        self._records: list[AktoRecord] = []
        self._ingested_ids: Counter[str] = Counter()
        self._all_ids: Counter[str] = Counter()
        self._duplicates = 0
        self._ingested = 0
        self._status_counts: Counter[int] = Counter()
        self._dropped = 0
        self._abandoned = 0
        self._pending = 0

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port == 0:
            raise RuntimeError("FakeAkto has no port yet: call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        # A fresh Application per start: aiohttp apps are frozen once run, and all
        # state worth keeping across a restart lives on self anyway.
        app = web.Application()
        app.router.add_post("/api/http-proxy", self._handle_http_proxy)
        app.router.add_post("/api/ingestData", self._handle_ingest)
        app.router.add_get("/_admin/config", self._admin_get_config)
        app.router.add_post("/_admin/config", self._admin_config)
        app.router.add_post("/_admin/reset", self._admin_reset)
        app.router.add_post("/_admin/down", self._admin_down)
        app.router.add_get("/_admin/records", self._admin_records)
        app.router.add_get("/_admin/stats", self._admin_stats)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._stopping = asyncio.Event()
        # reuse_address lets a restart rebind the port while the previous
        # connections sit in TIME_WAIT.
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        task, self._down_task = self._down_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._shutdown()

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        await runner.cleanup()

    async def down_for(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (connections are refused), then restart."""
        await self._shutdown()
        await asyncio.sleep(seconds)
        await self.start()

    async def __aenter__(self) -> FakeAkto:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- in-process accessors -----------------------------------------------

    @property
    def records(self) -> list[AktoRecord]:
        return self._records

    def message_ids(self, *, ingested_only: bool = True) -> Counter[str]:
        return Counter(self._ingested_ids if ingested_only else self._all_ids)

    def configure(self, **settings: object) -> Settings:
        for name, value in _validated(settings).items():
            setattr(self.behaviour, name, value)
        self._wake_waiters()
        return self.behaviour

    def reset(self) -> None:
        self.behaviour = Settings()
        self._records = []
        self._ingested_ids = Counter()
        self._all_ids = Counter()
        self._duplicates = 0
        self._ingested = 0
        self._status_counts = Counter()
        self._dropped = 0
        self._abandoned = 0
        self._wake_waiters()

    def stats(self) -> dict[str, object]:
        return {
            "requests": {str(k): v for k, v in sorted(self._status_counts.items())},
            "requests_total": sum(self._status_counts.values()),
            "dropped": self._dropped,
            "abandoned": self._abandoned,
            "pending": self._pending,
            "records": len(self._records),
            "ingested": self._ingested,
            "unique_message_ids": len(self._ingested_ids),
            "duplicates": self._duplicates,
        }

    async def wait_for_records(self, count: int) -> list[AktoRecord]:
        """Wait until at least ``count`` records arrived; bound it with ``asyncio.timeout``."""
        while len(self._records) < count:
            if self._arrived is None:
                self._arrived = asyncio.Event()
            await self._arrived.wait()
        return self._records

    def _wake_waiters(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _store(
        self,
        endpoint: Endpoint,
        request: web.Request,
        envelopes: list[dict[str, Any]],
        ingested: bool,
    ) -> str | None:
        query = dict(request.query)
        headers = {k.lower(): v for k, v in request.headers.items()}
        received_at = _now_ms()
        last_id: str | None = None
        for envelope in envelopes:
            message_id = _message_id(envelope)
            self._records.append(AktoRecord(endpoint, query, headers, envelope, received_at, message_id, ingested))
            if ingested:
                self._ingested += 1
            if message_id is not None:
                self._all_ids[message_id] += 1
                if ingested:
                    self._ingested_ids[message_id] += 1
                    if self._ingested_ids[message_id] > 1:
                        self._duplicates += 1
            last_id = message_id
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        return last_id

    # -- Akto endpoints -------------------------------------------------------

    async def _handle_http_proxy(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "http-proxy")

    async def _handle_ingest(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "ingestData")

    async def _serve(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        started = time.perf_counter()
        self._pending += 1
        try:
            # Decide first, wait, then store: a record counts as delivered only once
            # its answer is ready for a client that is still there to read it.
            answer = await self._decide(request, endpoint)
            if not await self._hold():
                self._dropped += 1
                # Akto going away mid-request: drop the connection, send nothing.
                if request.transport is not None:
                    request.transport.abort()
                self._log(request, None, started, "dropped (server stopping)")
                return web.Response(status=503)
            if answer.to_store is not None:
                if request.transport is None or request.transport.is_closing():
                    self._abandoned += 1
                    self._log(request, None, started, "abandoned (client gone before the answer)")
                    return web.Response(status=499)
                answer.message_id = self._store(endpoint, request, *answer.to_store)
            self._status_counts[answer.status] += 1
            self._log(request, answer, started, answer.note)
            return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)
        finally:
            self._pending -= 1

    async def _hold(self) -> bool:
        """Apply delay and hang; False when stop() interrupted us."""
        stopping = self._stopping
        delay_ms = self.behaviour.delay_ms
        if delay_ms > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay_ms / 1000)
        while self.behaviour.hang and not stopping.is_set():
            wake = self._wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), _HANG_RECHECK_S)
        return not stopping.is_set()

    async def _decide(self, request: web.Request, endpoint: Endpoint) -> _Answer:
        settings = self.behaviour
        if settings.fail_next > 0:
            settings.fail_next -= 1
            return _Answer(
                503,
                _error_body(endpoint, "Service unavailable", "injected fail_next"),
                note="injected fail_next",
            )
        if settings.status is not None:
            return self._injected_status(endpoint, settings.status)
        if self.api_key is not None and not self._authorized(request):
            return _Answer(401, _UNAUTHORIZED_HTML, content_type="text/html", note="bad api key")
        try:
            if endpoint == "http-proxy":
                answer = await self._accept_http_proxy(request)
            else:
                answer = await self._accept_ingest(request)
        except _Rejected as rejected:
            return _Answer(
                rejected.status,
                _error_body(endpoint, "Request rejected", rejected.error),
                note=rejected.error,
            )
        if settings.garbage:
            return _Answer(200, _GARBAGE_BODY, note="injected garbage", to_store=answer.to_store)
        return answer

    def _injected_status(self, endpoint: Endpoint, status: int) -> _Answer:
        note = f"injected status {status}"
        if status == 401:
            return _Answer(status, _UNAUTHORIZED_HTML, content_type="text/html", note=note)
        return _Answer(status, _error_body(endpoint, "Injected fault", note), note=note)

    def _authorized(self, request: web.Request) -> bool:
        supplied = request.headers.get("Authorization")
        return supplied is not None and (supplied == self.api_key or supplied == f"Bearer {self.api_key}")

    async def _accept_http_proxy(self, request: web.Request) -> _Answer:
        raw = await _read_limited(request, HTTP_PROXY_MAX_BODY)
        if request.query.get("file_guardrails") == "true":
            return self._accept_files(_decode_json(raw))
        envelope = _check_envelope(_decode_json(raw), HTTP_PROXY_MAX_STRING)
        query = request.query
        ingest = query.get("ingest_data") == "true"

        data: dict[str, object] = {"success": True, "message": SUCCESS_MESSAGE}
        note = "ingested" if ingest else "not ingested"
        checks: list[str] = []
        if query.get("guardrails") == "true":
            checks.append("requestPayload")
        if query.get("response_guardrails") == "true":
            checks.append("responsePayload")
        if checks and self.behaviour.verdict is not None:
            data["guardrailsResult"] = dict(self.behaviour.verdict)
            note += ", verdict as configured"
        elif checks and self.behaviour.fail_open:
            data["guardrailsResult"] = _fail_open_verdict()
            note += ", failOpen"
        elif checks:
            reason = self._flag_reason(envelope, checks)
            masked = "" if reason else self._masked(envelope, checks)
            data["guardrailsResult"] = self._verdict(reason, masked)
            note += f", flagged: {reason}" if reason else ", masked" if masked else ", allowed"
        body = {"success": True, "message": SUCCESS_MESSAGE, "data": data}
        return _Answer(200, _json_bytes(body), note=note, to_store=([envelope], ingest))

    async def _accept_ingest(self, request: web.Request) -> _Answer:
        raw = await _read_limited(request, INGEST_MAX_BODY)
        payload = _decode_json(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("batchData"), list):
            raise _Rejected(422, "body must be an object with a batchData list")
        batch = payload["batchData"]
        envelopes = [
            _check_envelope(record, INGEST_MAX_STRING, allow_bool=frozenset({"publishToGuardrails"}))
            for record in batch
        ]
        # Akto really does answer a successful batch with success=false.
        return _Answer(
            200,
            _json_bytes({"success": False}),
            note=f"batch of {len(envelopes)}",
            to_store=(envelopes, True),
        )

    def _flag_reason(self, envelope: Mapping[str, Any], fields: list[str]) -> str:
        triggers = self.behaviour.triggers
        for name in fields:
            text = envelope.get(name)
            if not isinstance(text, str) or not text:
                continue
            lowered = text.lower()
            for phrase, reason in triggers.items():
                if phrase.lower() in lowered:
                    return reason
        return ""

    def _masked(self, envelope: Mapping[str, Any], fields: list[str]) -> str:
        """The first checked field with every mask phrase replaced, or "" when none occurs."""
        for name in fields:
            text = envelope.get(name)
            if not isinstance(text, str) or not text:
                continue
            masked = text
            for phrase, replacement in self.behaviour.masks.items():
                masked = re.sub(re.escape(phrase), replacement, masked, flags=re.IGNORECASE)
            if masked != text:
                return masked
        return ""

    def _verdict(self, reason: str, masked: str = "") -> dict[str, object]:
        allowed = not reason
        behaviour = "" if allowed else self.behaviour.behaviour
        verdict: dict[str, object]
        if self.behaviour.key_case == "lower":
            verdict = {
                "allowed": allowed,
                "modified": bool(masked),
                "modifiedPayload": masked,
                "reason": reason,
                "Behaviour": behaviour,
            }
        else:
            verdict = {
                "Allowed": allowed,
                "Modified": bool(masked),
                "ModifiedPayload": masked,
                "Reason": reason,
                "behaviour": behaviour,
            }
        if reason and self.behaviour.metadata:
            verdict["Metadata" if self.behaviour.key_case == "upper" else "metadata"] = dict(self.behaviour.metadata)
        return verdict

    def _accept_files(self, payload: object) -> _Answer:
        """A file guardrail check (``file_guardrails=true``): the envelope plus a ``files`` list of
        ``{"filename", "type": image|audio|file, "content": <base64>}`` or ``{..., "url"}``, as LiteLLM's
        built-in Akto guardrail sends it. A file whose decoded bytes (or URL) hold a trigger phrase is
        flagged; masks apply too (answered Modified, as Akto would). Stored, never ingested."""
        if not isinstance(payload, dict):
            raise _Rejected(422, "record must be a JSON object")
        files = payload.get("files")
        if not isinstance(files, list) or not files:
            raise _Rejected(422, "files must be a non-empty list")
        texts: list[str] = []
        for index, item in enumerate(files):
            if not isinstance(item, dict) or item.get("type") not in ("image", "audio", "file"):
                raise _Rejected(422, f"files[{index}] must be an object with type image, audio or file")
            if not isinstance(item.get("filename"), str) or not item["filename"]:
                raise _Rejected(422, f"files[{index}].filename must be a non-empty string")
            content, url = item.get("content"), item.get("url")
            if isinstance(content, str) and content:
                try:
                    texts.append(base64.b64decode(content, validate=True).decode(errors="replace"))
                except ValueError:
                    raise _Rejected(422, f"files[{index}].content is not standard base64") from None
            elif isinstance(url, str) and url:
                texts.append(url)
            else:
                raise _Rejected(422, f"files[{index}] needs content (base64) or url")
        envelope = _check_envelope({k: v for k, v in payload.items() if k != "files"}, HTTP_PROXY_MAX_STRING)
        probe = {"requestPayload": "\n".join(texts)}
        reason = self._flag_reason(probe, ["requestPayload"])
        masked = "" if reason else self._masked(probe, ["requestPayload"])
        verdict = _fail_open_verdict() if self.behaviour.fail_open else self._verdict(reason, masked)
        body = {"success": True, "message": SUCCESS_MESSAGE, "data": {"guardrailsResult": verdict}}
        note = f"files: {len(files)}, " + (f"flagged: {reason}" if reason else "masked" if masked else "allowed")
        return _Answer(200, _json_bytes(body), note=note, to_store=([{**envelope, "files": files}], False))

    def _log(self, request: web.Request, answer: _Answer | None, started: float, note: str) -> None:
        if not self.log_requests:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = "---" if answer is None else str(answer.status)
        message_id = answer.message_id if answer is not None else None
        stamp = time.strftime("%H:%M:%S")
        line = f"{stamp} {request.method} {request.path_qs} {status} {elapsed_ms:.1f}ms"
        if message_id:
            line += f" id={message_id}"
        if note:
            line += f" {note}"
        print(line, flush=True)

    # -- admin endpoints --------------------------------------------------------

    async def _admin_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.behaviour.to_json())

    async def _admin_config(self, request: web.Request) -> web.Response:
        try:
            updates = await request.json()
            if not isinstance(updates, dict):
                raise ValueError("config body must be a JSON object")
            self.configure(**updates)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.log_requests:
            print(f"admin config {json.dumps(updates)}", flush=True)
        return web.json_response(self.behaviour.to_json())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        if self.log_requests:
            print("admin reset", flush=True)
        return web.json_response(self.behaviour.to_json())

    async def _admin_down(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json() if request.can_read_body else {}
            seconds = payload.get("seconds") if isinstance(payload, dict) else None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise ValueError('body must be {"seconds": <number>}')
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self._down_task is not None and not self._down_task.done():
            return web.json_response({"error": "already going down"}, status=409)
        self._down_task = asyncio.create_task(self._down_after_reply(float(seconds)))
        if self.log_requests:
            print(f"admin down for {seconds}s", flush=True)
        return web.json_response({"down_for_seconds": seconds})

    async def _down_after_reply(self, seconds: float) -> None:
        # Give the admin response a moment to leave before the listener closes.
        await asyncio.sleep(0.05)
        await self.down_for(seconds)
        if self.log_requests:
            print(f"back up on {self.url}", flush=True)

    async def _admin_records(self, request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", "0"))
            limit_raw = request.query.get("limit")
            limit = int(limit_raw) if limit_raw is not None else None
        except ValueError:
            return web.json_response({"error": "offset/limit must be ints"}, status=400)
        selected = self._records[offset:] if limit is None else (self._records[offset : offset + limit])
        return web.json_response(
            {
                "records": [record.to_json() for record in selected],
                "count": len(self._records),
                "unique_message_ids": len(self._ingested_ids),
                "duplicates": self._duplicates,
            }
        )

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


async def _serve_forever(host: str, port: int, api_key: str | None) -> None:
    akto = FakeAkto(host=host, port=port, api_key=api_key, log_requests=True)
    await akto.start()
    auth = "on" if api_key is not None else "off"
    print(f"fake akto listening on {akto.url} (auth {auth})", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    try:
        await done.wait()
    finally:
        await akto.stop()
        print("fake akto stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a fake Akto server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.host, args.port, args.api_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
