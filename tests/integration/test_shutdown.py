"""Stopping the proxy the way the deploy files run it loses nothing, and a restart replays at once.

The proxy is started with the image's own ENTRYPOINT and CMD from ``deploy/Dockerfile.proxy``
(an init that forwards the stop signal to the server's whole process group), with only the config
path and port swapped for local ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from akto_ingest.queue import inbox_key
from akto_ingest.record import Record
from akto_worker import stopping
from tests.stack import (
    AKTO_KEY,
    BIN,
    FAST_RETRY,
    MASTER_KEY,
    MONITOR_EXAMPLE,
    Proxy,
    free_port,
    litellm_config,
    new_redis,
    spawn,
    start_fake_akto,
    start_worker,
    wait_proxy,
    wait_until,
    worker_env,
)

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile.proxy"


def image_command(config: Path, port: int) -> list[str]:
    """ENTRYPOINT + CMD of the proxy image's final stage, pointed at a local config and port."""
    final = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[-1]
    found = {}
    for line in final.splitlines():
        keyword, _, rest = line.partition(" ")
        if keyword in ("ENTRYPOINT", "CMD"):
            found[keyword] = json.loads(rest)
    argv = [*found.get("ENTRYPOINT", []), *found["CMD"]]
    return [str(config) if a == "/app/config.yaml" else str(port) if a == "4000" else a for a in argv]


def start_like_the_image(name: str, log_dir: Path, redis_url: str, queue: str, spool: Path) -> Proxy:
    port = free_port()
    config = log_dir / f"{name}.yaml"
    config.write_text(litellm_config(MONITOR_EXAMPLE))
    env = {
        "AKTO_GUARDRAIL_API_BASE": "http://127.0.0.1:9",  # monitor mode: no inline check
        "AKTO_API_KEY": AKTO_KEY,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "REDIS_URL": redis_url,
        "AKTO_QUEUE_NAME": queue,
        "AKTO_SPOOL_DIR": str(spool),
        # The image's PATH has litellm on it; here it is the venv's, which `make test` does not activate.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = spawn(name, image_command(config, port), env, log_dir, cwd=log_dir)
    return Proxy(proc, port, queue, redis_url)


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def spooled_ids(spool: Path) -> set[str]:
    return {Record.from_json(line).id for segment in spool.glob("*.jsonl") for line in segment.read_text().splitlines()}


@pytest.mark.skipif(shutil.which("tini") is None, reason="tini is not installed (.ci/run installs it)")
def test_sigterm_during_a_redis_outage_loses_nothing_and_a_restart_replays_at_once(tmp_path: Path) -> None:
    server = new_redis(tmp_path)
    queue = f"akto:it:{uuid.uuid4().hex[:8]}:shutdown"
    spool = tmp_path / "spool"
    first = start_like_the_image("proxy-first", tmp_path, server.url, queue, spool)
    second: Proxy | None = None
    try:
        wait_proxy(first)
        server.stop()
        ids = []
        for i in range(20):
            response = first.chat(f"captured while Redis is down {i}")
            assert response.status_code == 200
            ids.append(response.headers["x-litellm-call-id"])
        servers = descendants(first.proc.popen.pid)
        assert first.proc.stop(signal.SIGTERM, timeout=60) in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
        wait_until(lambda: all(gone(pid) for pid in servers), 30, what="the server process to exit")
        assert "flushed its records at shutdown" in first.proc.log()
        assert set(ids) <= spooled_ids(spool), "every captured record is on disk"

        server.start(tmp_path)
        second = start_like_the_image("proxy-second", tmp_path, server.url, queue, spool)
        wait_proxy(second)
        client = redis.Redis.from_url(server.url)

        def delivered() -> bool:
            raws = client.lrange(inbox_key(queue), 0, -1)
            return set(ids) <= {Record.from_json(raw).id for raw in raws}  # type: ignore[union-attr]

        # No request reaches the restarted proxy: starting is enough to replay.
        wait_until(delivered, 60, what="the restarted proxy to replay the spool")
        client.close()
    finally:
        first.proc.stop(timeout=30)
        if second is not None:
            second.proc.stop(timeout=30)
        server.stop()


def test_a_worker_stopped_while_redis_is_gone_exits_within_its_grace_period(tmp_path: Path) -> None:
    # arq's close deletes its health-check key through the pool's outage retry (minutes): the worker
    # outlived SIGTERM by far more than Kubernetes' grace period, and was killed.
    akto_proc, akto = start_fake_akto(tmp_path)
    server = new_redis(tmp_path)
    queue = f"akto:it:{uuid.uuid4().hex[:8]}:stop"
    worker = start_worker("stop-worker", worker_env(akto.url, server.url, queue, **FAST_RETRY), tmp_path)
    try:
        server.stop()
        time.sleep(1)
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.popen.wait(60)
        took = time.monotonic() - started
        assert not worker.alive(), "still running 60 s after SIGTERM"
        assert took <= stopping.CLOSE_SECONDS + 5, f"exited {took:.1f}s after SIGTERM"
        assert "Redis did not answer while the worker stopped" in worker.log()
    finally:
        worker.stop(signal.SIGKILL)
        akto_proc.stop()
