"""Starting and stopping the real parts as separate processes: Redis, the fake Akto, the LiteLLM
proxy with the hook, and arq workers. Shared by the integration tests, the demo and the benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MASTER_KEY = "sk-akto-ingest-local-test"
AKTO_KEY = "akto-local-test-key"

MOCK_MODELS: list[dict[str, Any]] = [
    {
        "model_name": "gpt-3.5-turbo",
        "litellm_params": {
            "model": "openai/gpt-3.5-turbo",
            "mock_response": "Hello from the mock model",
            "api_key": "not-used",
        },
    },
    {
        "model_name": "broken",
        "litellm_params": {
            "model": "openai/broken",
            "mock_response": "litellm.InternalServerError",
            "api_key": "not-used",
        },
    },
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)


def spawn(name: str, args: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path = REPO) -> Proc:
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(args, env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    return Proc(name, popen, log_path)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


class _Admin:
    """Drives a fake server process over its /_admin endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    def configure(self, **settings: Any) -> None:
        httpx.post(f"{self.url}/_admin/config", json=settings, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_admin/reset", timeout=5).raise_for_status()


class AktoAdmin(_Admin):
    """Drives a fake Akto process (``tests/fake_akto.py``)."""

    def down(self, seconds: float) -> None:
        httpx.post(f"{self.url}/_admin/down", json={"seconds": seconds}, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_admin/stats", timeout=10).json()
        return data

    def records(self) -> list[dict[str, Any]]:
        data = httpx.get(f"{self.url}/_admin/records", params={"limit": 1_000_000}, timeout=60).json()
        return list(data["records"])

    def message_id_counts(self) -> dict[str, int]:
        """Ingested records per message id."""
        counts: dict[str, int] = {}
        for record in self.records():
            if record.get("ingested") and record.get("message_id"):
                counts[record["message_id"]] = counts.get(record["message_id"], 0) + 1
        return counts

    def records_for(self, call_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message_id") == call_id]

    def ingested_for(self, call_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records_for(call_id) if r.get("ingested")]


class LlmAdmin(_Admin):
    """Drives a fake model server process (``tests/fake_llm.py``)."""

    def requests(self) -> list[dict[str, Any]]:
        data = httpx.get(f"{self.url}/_admin/requests", timeout=10).json()
        return list(data["requests"])


def fake_llm_models(url: str) -> list[dict[str, Any]]:
    """A model list whose ``gpt-3.5-turbo`` is the fake model server at ``url`` (MOCK_MODELS otherwise)."""
    fake = {
        "model_name": "gpt-3.5-turbo",
        "litellm_params": {"model": "openai/fake-model", "api_base": f"{url}/v1", "api_key": "not-used"},
    }
    return [fake, *MOCK_MODELS[1:]]


def start_fake_llm(log_dir: Path, delay_ms: int = 0) -> tuple[Proc, LlmAdmin]:
    port = free_port()
    args = [str(BIN / "python"), str(REPO / "tests" / "fake_llm.py"), "--port", str(port), "--delay-ms", str(delay_ms)]
    proc = spawn(f"fake-llm-{port}", args, {}, log_dir)
    admin = LlmAdmin(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: http_ok(f"{admin.url}/_admin/requests"), 30, what="the fake model server to listen")
    except TimeoutError:
        proc.stop(signal.SIGKILL)
        raise
    return proc, admin


def start_fake_akto(log_dir: Path, port: int | None = None, api_key: str = AKTO_KEY) -> tuple[Proc, AktoAdmin]:
    port = port or free_port()
    proc = spawn(
        f"fake-akto-{port}",
        [
            str(BIN / "python"),
            str(REPO / "tests" / "fake_akto.py"),
            "--port",
            str(port),
            "--api-key",
            api_key,
        ],
        {},
        log_dir,
    )
    admin = AktoAdmin(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: http_ok(f"{admin.url}/_admin/stats"), 30, what="the fake Akto to listen")
    except TimeoutError:
        proc.stop(signal.SIGKILL)
        raise
    return proc, admin


@dataclass
class RedisServer:
    port: int
    folder: Path
    proc: Proc | None = None
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, log_dir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = spawn(
            f"redis-{self.port}",
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), *self.args],
            {},
            log_dir,
        )
        wait_until(lambda: _redis_answers(self.port), 10, what=f"redis on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=10)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def new_redis(log_dir: Path, *, appendonly: bool = False) -> RedisServer:
    folder = Path(tempfile.mkdtemp(prefix="akto-redis-", dir=log_dir))
    args = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--save", "", "--appendonly", "no"]
    server = RedisServer(free_port(), folder, args=args)
    server.start(log_dir)
    return server


BLOCK_EXAMPLE = REPO / "deploy" / "litellm" / "config.block.yaml"
MONITOR_EXAMPLE = REPO / "deploy" / "litellm" / "config.monitor.yaml"
CALLBACK_EXAMPLE = REPO / "deploy" / "litellm" / "config.callback.yaml"
DURING_EXAMPLE = REPO / "deploy" / "litellm" / "config.during-call.yaml"
MCP_EXAMPLE = REPO / "deploy" / "litellm" / "config.mcp.yaml"
# Tests retry fast; production defaults are 1 s doubling to 300 s, with a 10 s delivery timeout.
FAST_RETRY = {"AKTO_BACKOFF_BASE": "0.2", "AKTO_BACKOFF_MAX": "1", "AKTO_DELIVERY_TIMEOUT": "2"}

PROMETHEUS_SETTINGS = {"callbacks": ["prometheus"], "require_auth_for_metrics_endpoint": False}


def litellm_config(
    example: Path,
    *,
    drop: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
    litellm_settings: Mapping[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
) -> str:
    """An example config with the mock models (or ``models``) added; ``drop``/``extra`` edit the
    guardrail's params."""
    config = yaml.safe_load(example.read_text())
    config["model_list"] = models or MOCK_MODELS
    if litellm_settings:
        config["litellm_settings"] = dict(litellm_settings)
    if drop or extra:
        params = config["guardrails"][0]["litellm_params"]
        for key in drop:
            params.pop(key, None)
        params.update(extra or {})
    return str(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Proxy:
    proc: Proc
    port: int
    queue: str
    redis_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat(
        self, content: str, *, model: str = "gpt-3.5-turbo", stream: bool = False, timeout: float = 60
    ) -> httpx.Response:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        if stream:
            body["stream"] = True
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {MASTER_KEY}", "Cookie": "session=secret-cookie"},
            timeout=timeout,
        )


def start_proxy(
    name: str,
    config_text: str,
    log_dir: Path,
    *,
    akto_url: str,
    redis_url: str,
    queue: str,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Proxy:
    """Start a LiteLLM proxy (does not wait: call :func:`wait_proxy`)."""
    port = port or free_port()
    config_path = log_dir / f"{name}.yaml"
    config_path.write_text(config_text)
    proc = spawn(
        name,
        [str(BIN / "litellm"), "--config", str(config_path), "--port", str(port), "--num_workers", "1"],
        {
            "AKTO_GUARDRAIL_API_BASE": akto_url,
            "AKTO_API_KEY": AKTO_KEY,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "REDIS_URL": redis_url,
            "AKTO_QUEUE_NAME": queue,
            "AKTO_SPOOL_DIR": str(log_dir / f"spool-{name}"),
            **(env or {}),
        },
        log_dir,
        cwd=log_dir,
    )
    return Proxy(proc, port, queue, redis_url)


def wait_proxy(proxy: Proxy, timeout: float = 240) -> None:
    def ready() -> bool:
        if not proxy.proc.alive():
            raise RuntimeError(f"proxy {proxy.proc.name} exited:\n{proxy.proc.log()[-3000:]}")
        return http_ok(f"{proxy.url}/health/liveliness")

    wait_until(ready, timeout, interval=0.5, what=f"proxy {proxy.proc.name}")


def refused_start(config: Path, cwd: Path, **env: str) -> str:
    """Start a proxy with ``config`` that must refuse to start; its output. ``env`` is added to a
    minimal environment (the repo's packages on PYTHONPATH, a master key, no cost-map fetch)."""
    result = subprocess.run(
        [str(BIN / "litellm"), "--config", str(config), "--port", str(free_port())],
        env={
            "PATH": str(BIN),
            "HOME": str(cwd),
            "PYTHONPATH": ":".join(str(REPO / part) for part in ("common", "hook", "worker")),
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    return output


def worker_env(akto_url: str, redis_url: str, queue: str, **extra: str) -> dict[str, str]:
    return {
        "AKTO_GUARDRAIL_API_BASE": akto_url,
        "AKTO_API_KEY": AKTO_KEY,
        "REDIS_URL": redis_url,
        "AKTO_QUEUE_NAME": queue,
        "AKTO_WORKER_METRICS_PORT": "0",
        **extra,
    }


def start_worker(name: str, env: Mapping[str, str], log_dir: Path) -> Proc:
    proc = spawn(name, [str(BIN / "arq"), "akto_worker.WorkerSettings"], env, log_dir)
    try:
        wait_until(lambda: "akto worker ready" in proc.log() or not proc.alive(), 30, what=f"worker {name}")
    except TimeoutError:
        proc.stop(signal.SIGKILL)
        raise
    if not proc.alive():
        raise RuntimeError(f"worker {name} exited:\n{proc.log()[-3000:]}")
    return proc
