"""The shared environment of one bench run: Redis, one fake Akto, and LiteLLM proxies started on demand.

Process orchestration is ``tests.stack``'s, so the bench runs exactly what the integration tests run.
Every Redis key this run creates starts with ``bench:<run id>:`` and is deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from tests.stack import (
    AKTO_KEY,
    BIN,
    MOCK_MODELS,
    REPO,
    AktoAdmin,
    Proc,
    Proxy,
    free_port,
    http_ok,
    litellm_config,
    spawn,
    start_fake_akto,
    start_proxy,
    start_worker,
    wait_proxy,
    wait_until,
    worker_env,
)

from . import profile

BLOCK_EXAMPLE = REPO / "deploy" / "litellm" / "config.block.yaml"
MONITOR_EXAMPLE = REPO / "deploy" / "litellm" / "config.monitor.yaml"
MASTER_KEY_SETTINGS = {"master_key": "os.environ/LITELLM_MASTER_KEY"}

# Proxy kinds, in the order the end-to-end tables list them.
NONE = "none"
NOOP = "noop-post"
OURS_MONITOR = "ours-monitor"
OURS_BLOCK = "ours-block"
BUILTIN_POST = "builtin-post"
BUILTIN_PREPOST = "builtin-pre+post"
PROXY_KINDS = (NONE, NOOP, OURS_MONITOR, OURS_BLOCK, BUILTIN_POST, BUILTIN_PREPOST)
OURS = frozenset({OURS_MONITOR, OURS_BLOCK})

LABELS = {
    NONE: "no guardrail",
    NOOP: "no-op post_call guardrail (control)",
    OURS_MONITOR: "ours, monitor (post_call)",
    OURS_BLOCK: "ours, block (pre_call+post_call)",
    BUILTIN_POST: "built-in akto, post_call",
    BUILTIN_PREPOST: "built-in akto, pre_call+post_call",
}


def builtin_config(mode: list[str]) -> str:
    """LiteLLM's own ``guardrail: akto``. ``default_on`` makes it check every request, as ours does by
    default; without it LiteLLM 1.108.7 runs a guardrail only on requests that name it."""
    params: dict[str, Any] = {
        "guardrail": "akto",
        "mode": mode if len(mode) > 1 else mode[0],
        "akto_base_url": "os.environ/AKTO_GUARDRAIL_API_BASE",
        "akto_api_key": "os.environ/AKTO_API_KEY",
        "on_flagged": "block",
        "unreachable_fallback": "fail_open",
        "guardrail_timeout": 10,
        "default_on": True,
    }
    config = {
        "model_list": MOCK_MODELS,
        "guardrails": [{"guardrail_name": "akto-builtin", "litellm_params": params}],
        "general_settings": MASTER_KEY_SETTINGS,
    }
    return str(yaml.safe_dump(config, sort_keys=False))


def proxy_config(kind: str) -> str:
    if kind == NONE:
        return str(yaml.safe_dump({"model_list": MOCK_MODELS, "general_settings": MASTER_KEY_SETTINGS}))
    if kind == NOOP:
        guardrail = {
            "guardrail_name": "noop",
            "litellm_params": {"guardrail": "bench.noop_guardrail.NoopGuardrail", "mode": "post_call"},
        }
        config = {"model_list": MOCK_MODELS, "guardrails": [guardrail], "general_settings": MASTER_KEY_SETTINGS}
        return str(yaml.safe_dump(config, sort_keys=False))
    if kind == OURS_BLOCK:
        return litellm_config(BLOCK_EXAMPLE)
    if kind == OURS_MONITOR:
        return litellm_config(MONITOR_EXAMPLE)
    if kind == BUILTIN_POST:
        return builtin_config(["post_call"])
    if kind == BUILTIN_PREPOST:
        return builtin_config(["pre_call", "post_call"])
    raise ValueError(f"unknown proxy kind {kind}")


def _accepts_nulls(admin: AktoAdmin) -> bool:
    """Whether the fake Akto takes an envelope with a null value, as LiteLLM's built-in sends."""
    probe = {"path": "/probe", "method": "POST", "requestPayload": "{}", "direction": None}
    resp = httpx.post(f"{admin.url}/api/http-proxy", json=probe, headers={"Authorization": AKTO_KEY}, timeout=5)
    admin.reset()
    return resp.status_code == 200


def _start_lenient_akto(log_dir: Path) -> tuple[Proc, AktoAdmin]:
    """``tests.stack.start_fake_akto``, with ``bench/lenient_akto.py`` as the server."""
    port = free_port()
    args = [str(BIN / "python"), "-m", "bench.lenient_akto", "--port", str(port), "--api-key", AKTO_KEY]
    proc = spawn(f"fake-akto-lenient-{port}", args, {}, log_dir)
    admin = AktoAdmin(f"http://127.0.0.1:{port}")
    wait_until(lambda: http_ok(f"{admin.url}/_admin/stats"), 30, what="the lenient fake Akto to listen")
    return proc, admin


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass
class Bench:
    """One run's processes, queues and settings; ``close()`` stops and deletes all of it."""

    quick: bool
    redis_url: str = field(default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="akto-bench-")))
    profiling: bool = True
    procs: list[Proc] = field(default_factory=list)
    proxies: dict[str, Proxy] = field(default_factory=dict)
    _akto: tuple[Proc, AktoAdmin] | None = None
    notes: list[str] = field(default_factory=list)  # run-wide caveats for BENCHMARKS.md
    _e2e_worker: Proc | None = None

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)
        self.redis.ping()
        self.e2e_queue = self.queue("e2e")
        self.profiling = self.profiling and profile.executable() is not None

    def queue(self, name: str) -> str:
        return f"bench:{self.run_id}:{name}"

    @property
    def akto(self) -> AktoAdmin:
        """The one fake Akto every section shares (started on first use)."""
        if self._akto is None:
            proc, admin = start_fake_akto(self.log_dir)
            if not _accepts_nulls(admin):
                # LiteLLM's built-in guardrail would get 422 on every call; see bench/lenient_akto.py.
                proc.stop()
                proc, admin = _start_lenient_akto(self.log_dir)
                self.notes.append(
                    "tests/fake_akto.py answers 422 to envelopes with null values, which LiteLLM's built-in Akto "
                    "guardrail always sends (direction, process_id, socket_id, daemonset_id, enabled_graph); the "
                    "run used bench/lenient_akto.py, the same fake with null values dropped before its checks."
                )
            self.procs.append(proc)
            self._akto = (proc, admin)
        return self._akto[1]

    @property
    def akto_pid(self) -> int:
        self.akto  # noqa: B018 -- starts it
        assert self._akto is not None
        return int(self._akto[0].popen.pid)

    def redis_pid(self) -> int | None:
        """The Redis server's pid when it runs on this machine (for its CPU time)."""
        info: dict[str, Any] = self.redis.info("server")  # type: ignore[assignment]  # sync client: a dict
        pid = int(info.get("process_id", 0))
        return pid if pid and Path(f"/proc/{pid}").exists() else None

    def start_proxies(self, kinds: Iterable[str]) -> None:
        """Start the missing proxies together, then wait for all: each takes 10-50 s to import."""
        akto_url = self.akto.url
        started = []
        for kind in kinds:
            if kind in self.proxies:
                continue
            proxy = start_proxy(
                f"proxy-{kind}",
                proxy_config(kind),
                self.log_dir,
                akto_url=akto_url,
                redis_url=self.redis_url,
                queue=self.e2e_queue,
                env={"PYTHONPATH": str(REPO)},  # for the control case's bench.noop_guardrail
            )
            self.proxies[kind] = proxy
            self.procs.append(proxy.proc)
            started.append(proxy)
        for proxy in started:
            wait_proxy(proxy, timeout=300)
        if any(k in OURS for k in self.proxies):
            self.e2e_worker()

    def breaker_openings(self, kind: str) -> int:
        """Times the hook in this proxy found Redis too slow or gone and began spooling (from its log)."""
        proxy = self.proxies.get(kind)
        return proxy.proc.log().count("Redis unavailable") if proxy else 0

    def e2e_worker(self) -> Proc:
        """One worker with default settings for the proxies' queue, so Redis does not just fill."""
        if self._e2e_worker is None:
            self._e2e_worker = self.worker("worker-e2e", self.e2e_queue)
        return self._e2e_worker

    def worker(self, name: str, queue: str, **env: str) -> Proc:
        proc = start_worker(name, worker_env(self.akto.url, self.redis_url, queue, **env), self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop(timeout=60)
        if proc in self.procs:
            self.procs.remove(proc)

    def backlog(self, queue: str) -> int:
        """Records not yet delivered: in the inbox, or in jobs waiting or running."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(f"{queue}:inbox")
        pipe.zcard(queue)
        inbox, jobs = pipe.execute()
        return int(inbox) + int(jobs)

    def wait_drained(self, queue: str, timeout: float = 120) -> None:
        """Until Redis holds nothing for ``queue`` and the fake Akto's count stops moving: LiteLLM hands a
        record to the hook from its own in-process logging queue, a little after the response."""
        last: list[int] = [-1]

        def settled() -> bool:
            stats = self.akto.stats()
            count = int(stats["requests_total"])
            done = self.backlog(queue) == 0 and stats["pending"] == 0 and count == last[0]
            last[0] = count
            return done

        wait_until(settled, timeout, interval=0.1, what=f"queue {queue} to drain")

    def delete_keys(self, queue: str) -> None:
        keys = list(self.redis.scan_iter(match=f"{queue}*", count=1000))
        for start in range(0, len(keys), 500):
            self.redis.delete(*keys[start : start + 500])

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=60)
        self.procs.clear()
        self.delete_keys(f"bench:{self.run_id}:")
        self.redis.close()
        # The hook's spool folders, named after the queues (the proxies' and the in-process hook's).
        spool_root = Path(os.environ.get("TMPDIR", "/tmp")) / "akto-ingest-spool"
        for folder in spool_root.glob(f"bench_{self.run_id}_*"):
            shutil.rmtree(folder, ignore_errors=True)


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
