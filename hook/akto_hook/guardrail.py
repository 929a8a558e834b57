"""``AktoGuardrail``: the LiteLLM guardrail class users name as ``guardrail: akto_hook.AktoGuardrail``.

It stays thin. Block mode makes one inline Akto check before the LLM call (``mode: during_call``:
beside it); everything else is one Redis write per record from LiteLLM's background logging path,
after the client has its answer.
Delivery, retries and dead letters belong to the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks

from akto_ingest import logs
from akto_ingest.akto_client import AktoClient
from akto_ingest.config import GUARDRAIL_KEYS, AktoSettings, HookSettings, OnFlagged, QueueSettings
from akto_ingest.errors import ConfigError
from akto_ingest.record import Record
from akto_ingest.wire import Verdict

from . import calls, metrics, views
from .recording.enqueue import Enqueuer
from .recording.spool import default_dir
from .verdicts import masking, reporting
from .verdicts.check import DEFAULT_REASON, Decision, Failure, InlineCheck, blocked_fields, fallback_passes
from .verdicts.file_check import FileCheck, with_files
from .verdicts.response_check import ResponseCheck
from .views import capture, mcp, pass_through

log = logging.getLogger("akto_hook")


def _litellm_default(field: str) -> Any:
    """LiteLLM's own default for one of its typed guardrail params (None when it has none)."""
    try:
        from litellm.types.guardrails import LitellmParams

        return LitellmParams.model_fields[field].default
    except (ImportError, KeyError, AttributeError):
        return None


def _resolve_on_flagged(params: dict[str, Any], env: Mapping[str, str]) -> None:
    """Let ``AKTO_ON_FLAGGED`` apply when config.yaml omits ``on_flagged``.

    Some LiteLLM releases fill in their own default ("block") for an omitted key; that value cannot
    be told apart from one the user wrote, so when it equals LiteLLM's default the env variable wins.
    """
    value = params.get("on_flagged")
    if value is not None and value == _litellm_default("on_flagged") and env.get("AKTO_ON_FLAGGED"):
        params["on_flagged"] = None


def _unbuilt(exc: Exception, data: Mapping[str, Any]) -> Failure:
    """The failure of a check that could not be built: never a pass as if it had been checked."""
    if isinstance(exc, views.Unreadable):
        return Failure("unreadable_request", str(exc))
    # Our own bug must not decide the request: it is a check that could not be made.
    log.exception("akto check could not be built call_id=%s", data.get("litellm_call_id"))
    return Failure("internal_error", f"cannot build the check: {exc}")


def _on_pass_through(data: Any) -> bool:
    """Whether ``data`` is a pass-through request: LiteLLM's logging object in it says so, or it is the
    streaming marker alone, all LiteLLM gives guardrails of a WebSocket pass-through."""
    if not isinstance(data, Mapping):
        return False
    if len(data) == 1 and pass_through.WEBSOCKET_MARKER in data:
        return True
    return pass_through.is_pass_through(getattr(data.get("litellm_logging_obj"), "call_type", None))


class AktoGuardrail(CustomGuardrail):
    """Akto's API-security guardrail for the LiteLLM proxy, with ingestion off the request path.

    Config keys (under ``litellm_params``) and environment variables follow the spec: ``akto_base_url``
    / ``AKTO_GUARDRAIL_API_BASE``, ``akto_api_key`` / ``AKTO_API_KEY``, ``on_flagged`` /
    ``AKTO_ON_FLAGGED`` (block or monitor), ``unreachable_fallback`` (fail_closed or fail_open),
    ``guardrail_timeout`` (seconds), plus ``redis_url`` / ``REDIS_URL`` and ``queue_name`` /
    ``AKTO_QUEUE_NAME``. Invalid values raise :class:`akto_ingest.ConfigError` at proxy start.
    """

    def __init__(self, **kwargs: Any) -> None:
        logs.setup("akto_hook")
        env = os.environ
        ours = {key: kwargs.pop(key) for key in list(kwargs) if key in GUARDRAIL_KEYS}
        _resolve_on_flagged(ours, env)
        self.akto = AktoSettings.load(ours, env)
        self.queue = QueueSettings.load(ours, env)
        self.settings = HookSettings.load(ours, env)
        # The spec's config has no default_on, yet users expect every request checked; LiteLLM
        # passes False for an omitted key, so scoping is our own key: akto_scope: requested.
        kwargs["default_on"] = self.settings.akto_scope == "all"
        super().__init__(**kwargs)
        self._warn_about_modes()
        self._akto = AktoClient(self.akto, timeout=self.settings.guardrail_timeout)
        self._check = InlineCheck(self._akto, self.akto)
        self._files = (
            FileCheck(self._akto, self.akto, self.settings.file_guardrail_timeout)
            if self.settings.file_guardrails
            else None
        )
        self._enqueuer = Enqueuer(
            self.queue.redis_url,
            self.queue.queue_name,
            self.settings.enqueue_timeout,
            Path(self.settings.spool_dir) if self.settings.spool_dir else default_dir(self.queue.queue_name),
            self.settings.spool_max_bytes,
            redis_timeout=self.queue.redis_timeout,
        )
        # Per-call state (``calls.py``: by a key the client cannot choose, kept while the call lasts).
        # Calls blocked here: LiteLLM then reports the same call as a failure, which must not become
        # a second record.
        self._blocked: calls.PerCall[None] = calls.PerCall()
        # during_call: checks in flight (the LLM may finish first), and calls whose LLM output was
        # discarded by a block or a fail-closed fallback.
        self._checking: calls.PerCall[asyncio.Future[bool]] = calls.PerCall()
        self._discarded: calls.PerCall[None] = calls.PerCall()
        self._masks = masking.MaskedCalls()
        self._responses = ResponseCheck(self._akto, self.akto, self.settings, self._record_refused, self._masks)
        log.info(
            "akto guardrail %s loaded: on_flagged=%s fallback=%s akto=%s queue=%s",
            self.guardrail_name,
            self.settings.on_flagged,
            self.settings.unreachable_fallback,
            self.akto.akto_base_url,
            self.queue.queue_name,
        )

    def should_run_guardrail(self, data: Any, event_type: GuardrailEventHooks) -> bool:
        """LiteLLM's rule, but for one case: LiteLLM runs no during_call check on a pass-through
        route, so a ``mode: during_call`` guardrail the route names checks there before the call
        instead of never."""
        if event_type == GuardrailEventHooks.pre_call and _on_pass_through(data) and self._during_call_only():
            event_type = GuardrailEventHooks.during_call
        return bool(super().should_run_guardrail(data=data, event_type=event_type))

    def _during_call_only(self) -> bool:
        hooks = self._hooks()
        return "during_call" in hooks and "pre_call" not in hooks

    def _hooks(self) -> set[str]:
        hooks = self.event_hook if isinstance(self.event_hook, list) else [self.event_hook]
        return {str(getattr(h, "value", h)) for h in hooks if h is not None}

    def _warn_about_modes(self) -> None:
        hooks = self._hooks()
        checks = hooks & {"pre_call", "during_call"}
        if self.settings.on_flagged == "block" and not checks and mcp.PRE_MCP_CALL not in hooks:
            log.warning(
                "akto guardrail %s: on_flagged=block without mode pre_call or during_call never blocks",
                self.guardrail_name,
            )
        if self.settings.on_flagged == "block" and len(checks) > 1:
            log.warning(
                "akto guardrail %s: both pre_call and during_call: each request is checked twice", self.guardrail_name
            )
        if self.settings.check_response and (self.settings.on_flagged != "block" or "post_call" not in hooks):
            log.warning(
                "akto guardrail %s: check_response needs on_flagged=block and mode post_call; "
                "responses are not checked",
                self.guardrail_name,
            )
        if self.settings.file_guardrails and self.settings.on_flagged != "block":
            log.warning(
                "akto guardrail %s: file_guardrails needs on_flagged=block; attachments are not sent to Akto",
                self.guardrail_name,
            )
        if self.settings.on_flagged == "monitor" and checks:
            log.warning(
                "akto guardrail %s: on_flagged=monitor ignores %s; it never blocks",
                self.guardrail_name,
                " and ".join(sorted(checks)),
            )
        for warning in mcp.mode_warnings(self.settings.on_flagged, hooks):
            log.warning("akto guardrail %s: %s", self.guardrail_name, warning)

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Block mode, ``mode: pre_call``: one inline Akto check before the LLM call; 400 with Akto's
        reason on a block verdict."""
        if self.settings.on_flagged != "block":
            return data
        if mcp.is_mcp(call_type):
            # mode: pre_mcp_call; a tool listing is checked, never recorded.
            if not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.pre_mcp_call):
                return data
            return await self._checked(
                data, build=lambda: mcp.from_pre_call(data, call_type), record_block=mcp.is_tool_call(call_type)
            )
        if not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.pre_call):
            return data
        if pass_through.is_pass_through(call_type):
            try:
                parts = await pass_through.forwarded(pass_through.forwarded_request())
            except views.Unreadable as exc:
                unreadable = exc  # raised from the build, where every check that cannot be built fails

                def unbuildable() -> Record:
                    raise unreadable

                return await self._checked(data, build=unbuildable)
            return await self._checked(data, build=lambda: pass_through.from_pass_through(data, "block", parts))
        return await self._checked(data)

    async def async_moderation_hook(self, data: dict[str, Any], user_api_key_dict: Any, call_type: Any) -> Any:
        """Block mode, ``mode: during_call``: the same check, run by LiteLLM concurrently with the LLM
        call. LiteLLM awaits both before it sends the client anything (the response, or a stream's
        first chunk), so a block verdict (400) or a fail-closed fallback (503) discards the LLM's
        output; the LLM's own success record is then dropped so the call keeps one record."""
        if self.settings.on_flagged != "block" or mcp.is_mcp(call_type):  # during_mcp_call: see mcp.py
            return data
        if not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.during_call):
            return data
        key = calls.key_of(data)
        settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._checking[key] = settled
        passed = False
        try:
            await self._checked(data, during_call=True)
            passed = True
        except asyncio.CancelledError:
            # LiteLLM cancels the check when the client leaves or the LLM call fails. Unless it had
            # already blocked (and written the blocked record), the LLM's own record is the call's one.
            passed = key not in self._blocked
            raise
        finally:
            # The success log may be waiting on ``settled``: it is answered whatever happens here.
            try:
                self._checking.pop(key)
                if not passed:
                    self._discarded[key] = None
            finally:
                settled.set_result(passed)
        return data

    async def _checked(
        self,
        data: dict[str, Any],
        *,
        during_call: bool = False,
        build: Callable[[], Record] | None = None,
        record_block: bool = True,
    ) -> dict[str, Any]:
        """The inline check of ``data``'s request (or of what ``build`` makes of it): returns ``data``
        when it may pass, raises the 400 or 503 the client gets otherwise."""
        since = time.time()
        try:
            record = build() if build is not None else capture.from_request(data, "block")
        except Exception as exc:
            failure = _unbuilt(exc, data)
            self._report_fallback(data, failure, since, during_call)
            return self._unchecked(str(data.get("litellm_call_id")), failure, data)
        started = time.perf_counter()
        try:
            decision = await with_files(self._check.check(record), self._files, record, data)
        finally:
            metrics.CHECK_SECONDS.observe(time.perf_counter() - started)
        verdict = decision.verdict
        if decision.blocks:
            self._note_blocked(data, record.id, verdict)
            reporting.report(self, data, "blocked", started=since, verdict=verdict, during_call=during_call)
            update = blocked_fields(decision.reason, verdict)
            if during_call:
                # The prompt did reach the LLM; its answer was thrown away.
                update["metadata"] = {**record.metadata, "llm_output": "discarded"}
            if record_block:
                await self._enqueuer.put(record.model_copy(update=update))
            raise HTTPException(status_code=400, detail=decision.reason)
        if decision.failure is not None:
            self._report_fallback(data, decision.failure, since, during_call)
            if decision.failure.from_akto:
                data = self._unreachable(record.id, decision.failure, data)
            else:
                data = self._unchecked(record.id, decision.failure, data)
        if verdict.flagged:
            metrics.count_violation("flagged", verdict)
            log.warning(
                "akto flagged call_id=%s reason=%r policy=%r rule=%r severity=%s behaviour=%s (not blocking)",
                record.id,
                verdict.reason,
                verdict.policy,
                verdict.rule,
                verdict.severity or "-",
                verdict.behaviour,
            )
        if decision.masked:
            masked = await self._masked(data, record, decision, since, during_call)
            reporting.report(self, masked, "masked", started=since, verdict=verdict, during_call=during_call)
            return masked
        if decision.failure is None:
            status: reporting.Status = "flagged" if verdict.flagged else "allowed"
            reporting.report(self, data, status, started=since, verdict=verdict, during_call=during_call)
        return data

    def _note_blocked(self, data: dict[str, Any], call_id: str, verdict: Verdict) -> None:
        """Count and log a block; LiteLLM's failure log of the call then keeps no second record."""
        metrics.BLOCKED.inc()
        metrics.count_violation("blocked", verdict)
        self._blocked[calls.key_of(data)] = None
        log.info(
            "akto blocked call_id=%s reason=%r policy=%r rule=%r severity=%s",
            call_id,
            verdict.reason or DEFAULT_REASON,
            verdict.policy,
            verdict.rule,
            verdict.severity or "-",
        )

    def _report_fallback(self, data: dict[str, Any], failure: Failure, since: float, during_call: bool) -> None:
        fallback = self.settings.unreachable_fallback
        reporting.report(self, data, fallback, started=since, failure=failure, during_call=during_call)

    async def _masked(
        self, data: dict[str, Any], record: Record, decision: Decision, since: float, during_call: bool
    ) -> dict[str, Any]:
        """``data`` with Akto's mask applied (``masking.py``); 400 when it cannot be."""
        try:
            # LiteLLM runs such a guardrail on a copy, or beside the others, and keeps none of its changes.
            discarded = bool(getattr(self, "run_in_parallel", False) or getattr(self, "scan_raw_request", False))
            masked, found = masking.masked_call(
                data, record, decision, during_call=during_call, returns_discarded=discarded
            )
        except masking.Unmappable as exc:
            refused = dataclasses.replace(decision.verdict, reason=str(exc))
            self._note_blocked(data, record.id, refused)
            reporting.report(self, data, "blocked", started=since, verdict=refused, during_call=during_call)
            await self._enqueuer.put(masking.refused_record(record, decision, str(exc), during_call=during_call))
            raise HTTPException(status_code=400, detail=str(exc)) from None
        metrics.MASKED.labels("request").inc()
        self._masks.remember(calls.key_of(data), "request", found)
        log.info("akto masked call_id=%s", record.id)
        return masked

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        """Block mode with ``check_response: true``: check a response that is not streamed before the
        client gets it (``response_check.py``)."""
        if not self._responses.enabled:
            return None
        return await self._responses.checked(data, response)

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Block mode with ``check_response: true``: a stream passes as it comes and is checked once,
        at its end; a block ends it with an error event instead of ``[DONE]``."""
        chunks = self._responses.stream(response, request_data) if self._responses.enabled else response
        async for chunk in chunks:
            yield chunk

    async def _record_refused(self, record: Record, key: calls.Key) -> None:
        """The one record of a call whose response was refused: LiteLLM's own success or failure
        record of it is dropped."""
        self._blocked[key] = None
        self._discarded[key] = None
        await self._enqueuer.put(self._masks.tagged(record, key))

    def _unreachable(self, call_id: str, failure: Failure, data: dict[str, Any]) -> dict[str, Any]:
        """Akto gave no verdict (unreachable, an error, an unreadable body, its own fail-open)."""
        if fallback_passes(failure, self.settings.unreachable_fallback, call_id):
            return data
        raise HTTPException(status_code=503, detail=f"Akto guardrail unavailable: {failure.message}")

    def _unchecked(self, call_id: str, failure: Failure, data: dict[str, Any]) -> dict[str, Any]:
        """The check could not be made on our side: headers over Akto's limits, or a bug here."""
        if fallback_passes(failure, self.settings.unreachable_fallback, call_id):
            return data
        status = 413 if failure.reason == "too_large" else 503
        raise HTTPException(
            status_code=status, detail=f"Akto guardrail could not check this request: {failure.message}"
        )

    def _wants(self, kwargs: Mapping[str, Any]) -> bool:
        if self.default_on:
            return True
        params = kwargs.get("litellm_params") or {}
        data = {"metadata": params.get("metadata") or {}}
        return bool(self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.post_call))

    def records_call(self, kwargs: Mapping[str, Any]) -> bool:
        """True when this guardrail records the call LiteLLM's logging ``kwargs`` describe (an
        ``akto_hook.AktoLogger`` on the same proxy then leaves that call to it)."""
        return self._wants(kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Runs after the client has its response: one Redis write, nothing else."""
        if mcp.is_mcp(mcp.call_type_of(kwargs)):
            await self._record_mcp(lambda: mcp.from_success(kwargs, response_obj, self._mcp_mode()), kwargs)
            return
        key = calls.logged_key(kwargs)
        pending = self._checking.get(key)
        if pending is not None:
            # during_call: the LLM answered before Akto; the verdict decides whether this is a record.
            await asyncio.shield(pending)
        # A stream's response check may still be running: its refusal drops this record.
        await self._responses.settled(key)
        if key in self._discarded:
            self._discarded.pop(key)
            return
        if self._wants(kwargs):
            await self._record(lambda: capture.from_success(kwargs, response_obj, self.settings.on_flagged), kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A call that failed at the LLM is recorded with its error status; a call this guardrail
        blocked already has its record."""
        key = calls.logged_key(kwargs)
        if key in self._blocked:
            self._blocked.pop(key)
            return
        if mcp.is_mcp(mcp.call_type_of(kwargs)):
            await self._record_mcp(lambda: mcp.from_failure(kwargs, self._mcp_mode()), kwargs)
            return
        if self._wants(kwargs):
            await self._record(lambda: capture.from_failure(kwargs, self.settings.on_flagged), kwargs)

    def _mcp_mode(self) -> OnFlagged:
        return mcp.record_mode(self.settings.on_flagged, self._hooks())

    async def _record_mcp(self, build: Callable[[], Record], kwargs: Mapping[str, Any]) -> None:
        """A tool call's record (see ``mcp.py``); a tool listing is not a call and is not recorded."""
        if mcp.is_tool_call(mcp.call_type_of(kwargs)) and self._wants(kwargs):
            await self._record(build, kwargs)

    async def _record(self, build: Callable[[], Record], kwargs: Mapping[str, Any]) -> None:
        record = capture.built_or_logged(build, kwargs)
        if record is None:
            return
        await self._enqueuer.put(self._masks.tagged(record, calls.logged_key(kwargs)))


__all__ = ["AktoGuardrail", "ConfigError"]
