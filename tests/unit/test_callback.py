"""``akto_hook.akto_callback`` / ``AktoLogger``: lazy creation, clear config errors, and the writer's
executor surviving interpreter exit. Recording itself is proven end to end in
tests/integration/test_callback.py (real proxies, SDK scripts, a real worker)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from redis.asyncio import Redis

from akto_hook import AktoLogger, ConfigError
from akto_hook.callback import _ExitSafeExecutor, _Writer
from akto_hook.recording.enqueue import Enqueuer
from akto_ingest.queue import inbox_key
from tests.unit.conftest import REAL_REDIS_URL, RecordFactory

ROOT = Path(__file__).resolve().parents[2]
GOOD_ENV = {"AKTO_GUARDRAIL_API_BASE": "http://127.0.0.1:9", "AKTO_API_KEY": "k"}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = ":".join(str(ROOT / part) for part in ("common", "hook", "worker"))
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_akto_hook_creates_no_callback() -> None:
    # A bad config too: importing must neither build the callback nor fail.
    code = (
        "import threading, akto_hook, akto_hook.callback as cb;"
        "assert cb._default is None;"
        "assert not [t for t in threading.enumerate() if t.name.startswith('akto')];"
        "print('ok')"
    )
    result = _python(code, {"AKTO_GUARDRAIL_API_BASE": "akto.internal:9090"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_first_use_of_akto_callback_raises_the_config_error() -> None:
    code = "import akto_hook\ntry:\n    akto_hook.akto_callback\nexcept akto_hook.ConfigError as exc:\n    print(exc)"
    result = _python(code, {**GOOD_ENV, "AKTO_QUEUE_NAME": "q", "REDIS_URL": "redis://localhost:port"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "redis_url (env REDIS_URL): has an invalid port" in result.stdout


def test_akto_callback_is_one_object_built_from_the_environment() -> None:
    code = (
        "import akto_hook\n"
        "a, b = akto_hook.akto_callback, akto_hook.akto_callback\n"
        "assert a is b and isinstance(a, akto_hook.AktoLogger)\n"
        "print(a.queue.queue_name)"
    )
    result = _python(code, {**GOOD_ENV, "AKTO_QUEUE_NAME": "akto:unit:callback", "AKTO_SPOOL_DIR": "/tmp/akto-unit"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "akto:unit:callback"


def test_unknown_setting_names_itself_and_the_accepted_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GOOD_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) on_flagged, queue; accepted: .*queue_name"):
        AktoLogger(queue="x", on_flagged="block")


def test_bad_setting_raises_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AKTO_API_KEY", raising=False)
    threads = threading.active_count()
    with pytest.raises(ConfigError, match=r"akto_api_key \(env AKTO_API_KEY\) is required"):
        AktoLogger(akto_base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"enqueue_timeout \(env AKTO_ENQUEUE_TIMEOUT\)"):
        AktoLogger(akto_base_url="http://127.0.0.1:9", akto_api_key="k", enqueue_timeout=0)
    assert threading.active_count() == threads


def test_writer_executor_runs_work_inline_once_pools_refuse_it() -> None:
    executor = _ExitSafeExecutor(max_workers=1)
    assert executor.submit(threading.current_thread).result() is not threading.current_thread()
    executor.shutdown()
    # As at interpreter exit: the pool refuses new work, so it runs here.
    assert executor.submit(threading.current_thread).result() is threading.current_thread()
    failing = executor.submit(int, "not a number")
    with pytest.raises(ValueError):
        failing.result()


async def test_logger_built_on_a_running_loop_writes_each_record_once(
    real_redis: Redis, queue_name: str, tmp_path: Path, make_record: RecordFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # As on the proxy, which builds its loggers while its own event loop runs, and keeps it running.
    caplog.set_level(logging.ERROR, logger="akto_hook")
    spool = tmp_path / "spool"
    writer = _Writer(lambda: Enqueuer(REAL_REDIS_URL, queue_name, 2.0, spool, 1 << 20), enqueue_timeout=2.0)
    await asyncio.sleep(0.1)  # the caller's loop runs whatever the construction scheduled on it
    ids = [f"call-{i}" for i in range(5)]
    for call_id in ids:
        writer.submit(make_record(id=call_id, mode="monitor"))
        await asyncio.sleep(0.05)
    await asyncio.to_thread(writer.close, 5.0)
    queued = [json.loads(raw)["id"] for raw in await real_redis.lrange(inbox_key(queue_name), 0, -1)]  # type: ignore[misc]
    assert queued == ids
    assert not list(spool.glob("*.jsonl")), "Redis was up: nothing is spooled"
    assert [r.getMessage() for r in caplog.records] == []
