"""The shared environment of one bench run: Redis, one fake Akto, and LiteLLM proxies started on demand.

Process orchestration is ``tests.stack``'s, so the bench runs exactly what the integration tests run.
Every Redis key this run creates starts with ``bench:<run id>:`` and is deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.stack import (
    BLOCK_EXAMPLE,
    DURING_EXAMPLE,
    MOCK_MODELS,
    MONITOR_EXAMPLE,
    REPO,
    AktoAdmin,
    LlmAdmin,
    Proc,
    Proxy,
    RedisServer,
    litellm_config,
    new_redis,
    start_fake_akto,
    start_fake_llm,
    start_proxy,
    start_worker,
    wait_proxy,
    worker_env,
)

from . import profile

MASTER_KEY_SETTINGS = {"master_key": "os.environ/LITELLM_MASTER_KEY"}

# How long the fake Akto takes to answer, in every section (and the wait control's wait).
AKTO_DELAY_MS = 50

# Proxy kinds, in the order the end-to-end tables list them.
NONE = "none"
NOOP = "noop-post"
WAIT = "wait-pre"
ASK = "ask-pre"
OURS_MONITOR = "ours-monitor"
OURS_BLOCK = "ours-block"
OURS_DURING = "ours-during"
BUILTIN_POST = "builtin-post"
BUILTIN_PRE = "builtin-pre"
BUILTIN_PREPOST = "builtin-pre+post"
PROXY_KINDS = (NONE, NOOP, WAIT, ASK, OURS_MONITOR, OURS_BLOCK, OURS_DURING, BUILTIN_POST, BUILTIN_PRE, BUILTIN_PREPOST)
# The control guardrails (bench/controls.py) by proxy kind, and the mode each runs in.
CONTROLS = {
    NOOP: ("NoopGuardrail", "post_call"),
    WAIT: ("WaitGuardrail", "pre_call"),
    ASK: ("AskGuardrail", "pre_call"),
}
OURS = frozenset({OURS_MONITOR, OURS_BLOCK, OURS_DURING})

LABELS = {
    NONE: "no guardrail",
    NOOP: "no-op post_call guardrail (control)",
    WAIT: f"pre_call guardrail that only waits {AKTO_DELAY_MS} ms (control)",
    ASK: "pre_call guardrail that only POSTs one check to the fake Akto (control)",
    OURS_MONITOR: "ours, monitor",
    OURS_BLOCK: "ours, block, pre_call",
    OURS_DURING: "ours, block, during_call",
    BUILTIN_POST: "built-in akto, post_call",
    BUILTIN_PRE: "built-in akto, pre_call",
    BUILTIN_PREPOST: "built-in akto, pre_call+post_call",
}
# Every proxy serves both models: LiteLLM's in-process mock, and the fake model server (tests/fake_llm.py)
# answering after SLOW_LLM_MS, as a real LLM on the request path does.
MOCK_MODEL = "gpt-3.5-turbo"
SLOW_MODEL = "slow-llm"
SLOW_LLM_MS = 300


def model_list(llm_url: str) -> list[dict[str, Any]]:
    slow = {
        "model_name": SLOW_MODEL,
        "litellm_params": {"model": "openai/fake-model", "api_base": f"{llm_url}/v1", "api_key": "not-used"},
    }
    return [*MOCK_MODELS, slow]


def builtin_config(mode: list[str], models: list[dict[str, Any]]) -> str:
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
        "model_list": models,
        "guardrails": [{"guardrail_name": "akto-builtin", "litellm_params": params}],
        "general_settings": MASTER_KEY_SETTINGS,
    }
    return str(yaml.safe_dump(config, sort_keys=False))


def proxy_config(kind: str, llm_url: str) -> str:
    models = model_list(llm_url)
    if kind == NONE:
        return str(yaml.safe_dump({"model_list": models, "general_settings": MASTER_KEY_SETTINGS}))
    if kind in CONTROLS:
        name, mode = CONTROLS[kind]
        guardrail = {"guardrail_name": kind, "litellm_params": {"guardrail": f"bench.controls.{name}", "mode": mode}}
        config = {"model_list": models, "guardrails": [guardrail], "general_settings": MASTER_KEY_SETTINGS}
        return str(yaml.safe_dump(config, sort_keys=False))
    if kind == OURS_BLOCK:
        return litellm_config(BLOCK_EXAMPLE, models=models)
    if kind == OURS_DURING:
        return litellm_config(DURING_EXAMPLE, models=models)
    if kind == OURS_MONITOR:
        return litellm_config(MONITOR_EXAMPLE, models=models)
    if kind == BUILTIN_POST:
        return builtin_config(["post_call"], models)
    if kind == BUILTIN_PRE:
        return builtin_config(["pre_call"], models)
    if kind == BUILTIN_PREPOST:
        return builtin_config(["pre_call", "post_call"], models)
    raise ValueError(f"unknown proxy kind {kind}")


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
    redis_url: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="akto-bench-")))
    profiling: bool = True
    procs: list[Proc] = field(default_factory=list)
    proxies: dict[str, Proxy] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # run-wide caveats for BENCHMARKS.md
    # Figures one section measures and a later one uses (the capacity plan), by name.
    figures: dict[str, float] = field(default_factory=dict)
    _akto: tuple[Proc, AktoAdmin] | None = None
    _llm: tuple[Proc, LlmAdmin] | None = None
    _own_redis: RedisServer | None = None

    def __post_init__(self) -> None:
        if not self.redis_url:
            # A Redis of the run's own, so its CPU per record (the capacity figures) is this run's alone;
            # with AOF every second, as a production queue runs.
            if shutil.which("redis-server"):
                self._own_redis = new_redis(self.log_dir, appendonly=True)
                self.redis_url = self._own_redis.url
            else:
                self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
                self.notes.append(f"redis-server is not installed: the run shared the Redis at {self.redis_url}.")
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
            self._akto = start_fake_akto(self.log_dir)
            self.procs.append(self._akto[0])
        return self._akto[1]

    @property
    def akto_pid(self) -> int:
        self.akto  # noqa: B018 -- starts it
        assert self._akto is not None
        return int(self._akto[0].popen.pid)

    @property
    def llm(self) -> LlmAdmin:
        """The fake model server behind SLOW_MODEL (started on first use)."""
        if self._llm is None:
            self._llm = start_fake_llm(self.log_dir, SLOW_LLM_MS)
            self.procs.append(self._llm[0])
        return self._llm[1]

    def redis_pid(self) -> int | None:
        """The Redis server's pid when it runs on this machine (for its CPU time)."""
        info: dict[str, Any] = self.redis.info("server")  # type: ignore[assignment]  # sync client: a dict
        pid = int(info.get("process_id", 0))
        return pid if pid and Path(f"/proc/{pid}").exists() else None

    def redis_cpu_seconds(self) -> float:
        """The Redis server's CPU time so far (INFO cpu: microseconds, wherever Redis runs)."""
        info: dict[str, Any] = self.redis.info("cpu")  # type: ignore[assignment]  # sync client: a dict
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def start_proxies(self, kinds: Iterable[str]) -> None:
        """Start the missing proxies together, then wait for all: each takes 10-50 s to import.

        No worker runs beside them: in production it runs elsewhere, and here it would only take the
        proxies' cores. Their records wait in Redis and are deleted at the end of the run.
        """
        started = []
        for kind in kinds:
            if kind in self.proxies:
                continue
            proxy = start_proxy(
                f"proxy-{kind}",
                proxy_config(kind, self.llm.url),
                self.log_dir,
                akto_url=self.akto.url,
                redis_url=self.redis_url,
                queue=self.e2e_queue,
                env={
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "BENCH_WAIT_MS": str(AKTO_DELAY_MS),
                },
            )
            self.proxies[kind] = proxy
            self.procs.append(proxy.proc)
            started.append(proxy)
        for proxy in started:
            wait_proxy(proxy, timeout=300)

    def breaker_openings(self, kind: str) -> int:
        """Times the hook in this proxy found Redis too slow or gone and began spooling (from its log)."""
        proxy = self.proxies.get(kind)
        return proxy.proc.log().count("Redis unavailable") if proxy else 0

    def worker(self, name: str, queue: str, **env: str) -> Proc:
        proc = start_worker(name, worker_env(self.akto.url, self.redis_url, queue, **env), self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop(timeout=60)
        if proc in self.procs:
            self.procs.remove(proc)

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
        if self._own_redis is not None:
            self._own_redis.stop()
        # The hook's spool folders, named after the queues (the proxies' and the in-process hook's).
        spool_root = Path(os.environ.get("TMPDIR", "/tmp")) / "akto-ingest-spool"
        for folder in spool_root.glob(f"bench_{self.run_id}_*"):
            shutil.rmtree(folder, ignore_errors=True)
