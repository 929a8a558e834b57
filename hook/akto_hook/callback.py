"""``akto_hook.akto_callback`` and ``AktoLogger``: record every LiteLLM call through its callback lists.

For teams that call LiteLLM as a library, or want recording on the proxy without a guardrail. Each
call becomes one monitor record (the worker asks Akto for a verdict while ingesting it and logs
violations): nothing blocks and nothing waits on Akto.

LiteLLM calls a logger from several places that live shorter than the process: sync SDK calls log
successes from its logging thread pool and failures from the caller's thread; async calls log from
the caller's event loop, or, when that loop has ended (``asyncio.run`` in a script), from a fresh
loop in LiteLLM's own exit hook. So records are not written on the caller's loop: they go to one
long-lived writer thread with its own loop and :class:`Enqueuer`, which does the Redis write (or
the spool) exactly as it does for the guardrail. Handing a record over costs the caller one
``call_soon_threadsafe`` and never waits on Redis. At interpreter exit the writer is flushed with a
bounded wait.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import litellm
from litellm.integrations.custom_logger import CustomLogger

from akto_ingest import logs
from akto_ingest.config import AktoSettings, HookSettings, QueueSettings
from akto_ingest.errors import ConfigError
from akto_ingest.record import Record

from .guardrail import AktoGuardrail
from .recording.enqueue import Enqueuer
from .recording.spool import default_dir
from .views import capture, mcp

log = logging.getLogger("akto_hook")

# The settings a logger takes: where Akto and the queue are, and how the hook writes. The guardrail's
# inline-check keys (on_flagged, unreachable_fallback, guardrail_timeout, akto_scope) mean nothing here.
SETTINGS = (
    set(AktoSettings.model_fields)
    | set(QueueSettings.model_fields)
    | {"enqueue_timeout", "spool_dir", "spool_max_bytes"}
)
# The longest the interpreter's exit waits for records still on their way to Redis or the spool.
EXIT_FLUSH_SECONDS = 5.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _ExitSafeExecutor(concurrent.futures.ThreadPoolExecutor):
    """The writer loop's executor (DNS look-ups when connecting to Redis, spool fsyncs).

    Once the interpreter has begun to exit, every thread pool refuses new work, yet the exit flush
    still connects to Redis and writes the spool; those calls then run inline on the writer thread.
    """

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:
            future: concurrent.futures.Future[_T] = concurrent.futures.Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            return future


def _run_litellm_exit_flush() -> None:
    """Let LiteLLM run the async log callbacks it still holds, before the writer closes.

    LiteLLM queues async success/failure callbacks on its logging worker; when the loop that queued
    them has ended, its exit hook runs them on a fresh loop. That hook was registered when LiteLLM
    was imported, before ours, so it would run after our flush and its records would miss it. It is
    a no-op once its queue is empty, so LiteLLM's own call later does nothing.
    """
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:
        return
    flush = getattr(GLOBAL_LOGGING_WORKER, "_flush_on_exit", None)
    if callable(flush):
        flush()


class _Writer:
    """A daemon thread running an event loop that owns one :class:`Enqueuer`."""

    def __init__(self, make_enqueuer: Callable[[], Enqueuer], enqueue_timeout: float) -> None:
        self._make_enqueuer = make_enqueuer
        self._enqueue_timeout = enqueue_timeout
        self._undelivered = False
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(_ExitSafeExecutor(thread_name_prefix="akto-hook-writer-io"))
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[bool]] = set()
        self._closed = False
        self.pid = os.getpid()
        # Started now, not at the first record: that record may come while the interpreter exits,
        # when Python 3.12+ refuses to start threads.
        self._thread = threading.Thread(target=self._run, name="akto-hook-writer", daemon=True)
        self._thread.start()
        self._enqueuer = self._build_on_loop(make_enqueuer)
        atexit.register(self.flush_at_exit)

    def _build_on_loop(self, make_enqueuer: Callable[[], Enqueuer]) -> Enqueuer:
        """Build the Enqueuer on the writer's loop, waiting for it so a bad spool folder fails here.

        Never on the caller's loop: the proxy builds its loggers while its own loop runs, and an
        Enqueuer built there starts its tasks on that loop, then writes from this one. Two loops then
        share its Redis connections and events; a push Redis took fails on the wrong loop, is spooled
        and replayed, and Akto gets the record twice.
        """

        async def build() -> Enqueuer:
            return make_enqueuer()

        try:
            return asyncio.run_coroutine_threadsafe(build(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, record: Record) -> None:
        """Hand one record to the writer; returns at once."""
        future: concurrent.futures.Future[bool] | None = None
        with self._lock:
            if not self._closed:
                future = asyncio.run_coroutine_threadsafe(self._enqueuer.put(record), self._loop)
                self._pending.add(future)
        if future is None:
            # After the exit flush nothing else will wait for this record: write it now.
            self._write_now(record)
            return
        # Outside the lock: a future already done runs the callback (which takes the lock) at once.
        future.add_done_callback(self._settled)

    def _settled(self, future: concurrent.futures.Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.cancelled():
            return
        if future.exception() is not None:
            log.error("akto record write failed", exc_info=future.exception())
        elif not future.result():
            self._undelivered = True

    def _write_now(self, record: Record) -> None:
        async def once() -> None:
            enqueuer = self._make_enqueuer()
            try:
                await enqueuer.put(record)
            finally:
                await enqueuer.close()

        try:
            asyncio.run_coroutine_threadsafe(once(), self._loop).result(EXIT_FLUSH_SECONDS)
        except Exception:
            log.exception("akto record call_id=%s could not be written at exit", record.id)

    def flush_at_exit(self) -> None:
        """Wait (bounded) until every record handed over is in Redis or the spool, then close."""
        if os.getpid() != self.pid:
            return  # a forked child: the writer thread is the parent's
        _run_litellm_exit_flush()
        self.close(EXIT_FLUSH_SECONDS)

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout=timeout)
        if self._undelivered:
            # A put that timed out leaves its group with the Enqueuer's flusher, which lands it in
            # Redis or the spool within one more enqueue timeout; closing sooner could cut it off.
            time.sleep(self._enqueue_timeout)
        try:
            closing = asyncio.run_coroutine_threadsafe(self._enqueuer.close(), self._loop)
            closing.result(max(0.1, deadline - time.monotonic()))
        except Exception:
            log.exception("akto record writer did not close cleanly")
        unsettled = sum(not f.done() for f in pending)
        if unsettled:
            log.critical("akto: %d record(s) still unwritten after %.1fs at exit", unsettled, timeout)


class AktoLogger(CustomLogger):
    """A LiteLLM logger that records every call it is registered for, as a monitor record.

    Register it like any LiteLLM callback: ``litellm.callbacks = [logger]`` (successes and
    failures) or ``litellm.success_callback = [logger]`` (successes), and on the proxy the same
    under ``litellm_settings``. Settings are the guardrail's (``akto_base_url``, ``akto_api_key``,
    ``redis_url``, ``queue_name``, ``enqueue_timeout``, ``spool_dir``, ...), each falling back to
    its environment variable. An unknown or invalid setting raises :class:`ConfigError`.
    """

    def __init__(self, **settings: Any) -> None:
        logs.setup("akto_hook")
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:
            raise ConfigError(
                f"invalid Akto logger configuration: unknown setting(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(SETTINGS))}"
            )
        env = os.environ
        self.akto = AktoSettings.load(settings, env)
        self.queue = QueueSettings.load(settings, env)
        self.settings = HookSettings.load(settings, env)
        super().__init__()
        self._writer_lock = threading.Lock()
        self._writer = _Writer(self._new_enqueuer, self.settings.enqueue_timeout)
        # LiteLLM runs async log events only for loggers on its async lists, which a logger named in
        # success_callback/failure_callback (the proxy's litellm_settings keys, or litellm.success_callback
        # in the SDK) never reaches: acompletion and every proxy call would go unrecorded. So the
        # logger joins those lists itself, and each async event checks what the user registered it for.
        litellm.logging_callback_manager.add_litellm_async_success_callback(self)
        litellm.logging_callback_manager.add_litellm_async_failure_callback(self)
        log.info("akto logger loaded: queue=%s", self.queue.queue_name)

    def _new_enqueuer(self) -> Enqueuer:
        spool = Path(self.settings.spool_dir) if self.settings.spool_dir else default_dir(self.queue.queue_name)
        return Enqueuer(
            self.queue.redis_url,
            self.queue.queue_name,
            self.settings.enqueue_timeout,
            spool,
            self.settings.spool_max_bytes,
            redis_timeout=self.queue.redis_timeout,
        )

    def _writer_here(self) -> _Writer:
        if self._writer.pid != os.getpid():
            with self._writer_lock:  # a forked child gets a writer of its own
                if self._writer.pid != os.getpid():
                    self._writer = _Writer(self._new_enqueuer, self.settings.enqueue_timeout)
        return self._writer

    # --- sync SDK calls: LiteLLM calls these from its logging threads or the caller's thread ---

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A completed sync call; a streamed one arrives here once, assembled."""
        self._record(lambda: _success(kwargs, response_obj), kwargs)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A sync call that failed at the LLM, recorded with its error status."""
        self._record(lambda: _failure(kwargs), kwargs)

    # --- async calls (SDK acompletion, every proxy call) ---

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A completed async call; a streamed one arrives here once, assembled."""
        if self._registered(litellm.success_callback):
            self._record(lambda: _success(kwargs, response_obj), kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """An async call that failed at the LLM, recorded with its error status."""
        if self._registered(litellm.failure_callback):
            self._record(lambda: _failure(kwargs), kwargs)

    def _registered(self, event_list: list[Any]) -> bool:
        """Whether the user registered this logger for the event (we joined LiteLLM's async lists ourselves)."""
        return any(entry is self for entry in (*litellm.callbacks, *event_list))

    def _record(self, build: Callable[[], Record], kwargs: Mapping[str, Any]) -> None:
        if _guardrail_records(kwargs):
            return
        call_type = mcp.call_type_of(kwargs)
        if mcp.is_mcp(call_type) and not mcp.is_tool_call(call_type):
            return  # an MCP tool listing is not a call
        record = capture.built_or_logged(build, kwargs)
        if record is None:
            return
        self._writer_here().submit(record)


def _success(kwargs: Mapping[str, Any], response: Any) -> Record:
    if mcp.is_tool_call(mcp.call_type_of(kwargs)):
        return mcp.from_success(kwargs, response, "monitor")
    return capture.from_success(kwargs, response, "monitor")


def _failure(kwargs: Mapping[str, Any]) -> Record:
    if mcp.is_tool_call(mcp.call_type_of(kwargs)):
        return mcp.from_failure(kwargs, "monitor")
    return capture.from_failure(kwargs, "monitor")


def _guardrail_records(kwargs: Mapping[str, Any]) -> bool:
    """True when an Akto guardrail on this proxy records the call itself; one record per call."""
    return any(isinstance(cb, AktoGuardrail) and cb.records_call(kwargs) for cb in litellm.callbacks)


_default: AktoLogger | None = None
_default_lock = threading.Lock()


def default_callback() -> AktoLogger:
    """The process-wide logger configured from the environment (``akto_hook.akto_callback``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AktoLogger()
        return _default
