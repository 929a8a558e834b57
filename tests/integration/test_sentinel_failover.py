"""Redis Sentinel: a real primary, replica and Sentinel; the primary is killed under traffic, and the
hook's writer, a real arq worker and ``akto-ingest`` all follow the new primary.

What a failover may lose is only what the replica had not received when the primary died (Redis
replicates asynchronously); the test checks that nothing else goes missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from akto_hook.recording.enqueue import Enqueuer
from akto_ingest.record import Record
from tests.stack import (
    BIN,
    FAST_RETRY,
    AktoAdmin,
    Proc,
    RedisServer,
    free_port,
    spawn,
    start_fake_akto,
    start_worker,
    wait_until,
    worker_env,
)

MASTER = "akto-primary"
# Writes the old primary acknowledged this shortly before it died may not have reached the replica.
REPLICATION_WINDOW_SECONDS = 1.0


@dataclass
class Cluster:
    primary: RedisServer
    replica: RedisServer
    sentinel: Proc
    sentinel_port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER}"

    async def master_port(self) -> int:
        sentinel = Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=2)
        try:
            _, port = await sentinel.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)  # type: ignore[no-untyped-call]
            return int(port)
        finally:
            await sentinel.aclose()


def _start_redis(log_dir: Path, *args: str) -> RedisServer:
    folder = Path(tempfile.mkdtemp(prefix="akto-redis-", dir=log_dir))
    server = RedisServer(free_port(), folder, args=["--save", "", "--appendonly", "no", *args])
    server.start(log_dir)
    return server


def _replica_linked(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "replication"], capture_output=True, text=True, timeout=5
    ).stdout
    return "master_link_status:up" in out


def _sentinel_sees_replica(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "sentinel", "replicas", MASTER], capture_output=True, text=True, timeout=5
    ).stdout
    return "slave" in out


@contextlib.contextmanager
def _cluster(log_dir: Path, down_after_ms: int) -> Iterator[Cluster]:
    """A primary, its replica and one Sentinel that fails over ``down_after_ms`` after the primary stops
    answering."""
    primary = _start_redis(log_dir)
    servers = [primary]
    sentinel: Proc | None = None
    try:
        replica = _start_redis(log_dir, "--replicaof", "127.0.0.1", str(primary.port))
        servers.append(replica)
        wait_until(lambda: _replica_linked(replica.port), 20, what="the replica to sync")
        port = free_port()
        conf = log_dir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {log_dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        sentinel = spawn("sentinel", ["redis-server", str(conf), "--sentinel"], {}, log_dir)
        wait_until(lambda: _sentinel_sees_replica(port), 30, what="Sentinel to discover the replica")
        yield Cluster(primary, replica, sentinel, port)
    finally:
        if sentinel is not None:
            sentinel.stop(signal.SIGTERM, timeout=10)
        for server in servers:
            server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with _cluster(tmp_path, down_after_ms=1000) as started:
        yield started


@dataclass
class Traffic:
    """Records the in-process hook writer queued, and when and how each put ended."""

    acked: dict[str, float] = field(default_factory=dict)  # id -> when Redis acknowledged it
    spooled: list[str] = field(default_factory=list)


async def _send(enqueuer: Enqueuer, traffic: Traffic, prefix: str, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        record = Record(id=f"{prefix}-{n}", mode="block", request_body={"messages": [{"content": str(n)}]})
        if await enqueuer.put(record):
            traffic.acked[record.id] = time.monotonic()
        else:
            traffic.spooled.append(record.id)
        n += 1
        await asyncio.sleep(0.01)


async def _fail_over_under_traffic(cluster: Cluster, enqueuer: Enqueuer, traffic: Traffic) -> tuple[float, float]:
    """Send, kill the primary, keep sending until well after a new primary is elected."""
    stop = asyncio.Event()
    sender = asyncio.create_task(_send(enqueuer, traffic, "fo", stop))
    await asyncio.sleep(2)
    assert cluster.primary.proc is not None
    killed_at = time.monotonic()
    cluster.primary.proc.stop(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while await cluster.master_port() != cluster.replica.port:
        assert time.monotonic() < deadline, "Sentinel did not promote the replica"
        await asyncio.sleep(0.2)
    promoted_at = time.monotonic()
    # Keep sending until the hook writes to the new primary directly again (its breaker closed).
    while not any(t > promoted_at for t in traffic.acked.values()):
        assert time.monotonic() < deadline, "the hook never wrote to the new primary"
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    stop.set()
    await sender
    return killed_at, promoted_at


def _cli(cluster: Cluster, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "akto-ingest"), "--redis-url", cluster.url, "--queue", queue, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hook_worker_and_cli_follow_a_sentinel_failover(cluster: Cluster, tmp_path: Path) -> None:
    queue = f"akto:failover:{uuid.uuid4().hex[:8]}"
    akto_proc, akto = start_fake_akto(tmp_path)
    worker: Proc | None = None
    try:
        worker = start_worker("worker-sentinel", worker_env(akto.url, cluster.url, queue, **FAST_RETRY), tmp_path)
        traffic = Traffic()

        async def run() -> tuple[float, float]:
            enqueuer = Enqueuer(cluster.url, queue, 0.5, tmp_path / "spool", 64 * 1024 * 1024)
            try:
                return await _fail_over_under_traffic(cluster, enqueuer, traffic)
            finally:
                await enqueuer.close()

        killed_at, promoted_at = asyncio.run(run())

        assert traffic.spooled, "the failover gap went to the hook's spool"
        after = {i for i, t in traffic.acked.items() if t > promoted_at}
        assert after, "records were written to the new primary"
        sent = set(traffic.acked) | set(traffic.spooled)

        def delivered() -> set[str]:
            return set(_ingested(akto)) & sent

        # Everything but what the replica may not have received reaches Akto through the worker,
        # which never restarted: it followed the new primary on its own.
        may_lose = {i for i, t in traffic.acked.items() if killed_at - REPLICATION_WINDOW_SECONDS < t <= killed_at}
        try:
            wait_until(lambda: sent - may_lose <= delivered(), 90, interval=0.5, what="every record delivered")
        except TimeoutError:
            missing = sent - may_lose - delivered()
            pytest.fail(
                f"{len(missing)} of {len(sent)} records not delivered ({len(missing & set(traffic.spooled))} spooled, "
                f"{len(missing & after)} written after the promotion): {sorted(missing)[:10]}\n{worker.log()[-3000:]}"
            )
        assert worker.alive(), worker.log()[-3000:]
        assert after | set(traffic.spooled) <= delivered()
        lost = sent - delivered()
        assert lost <= may_lose, f"lost records outside the replication window: {sorted(lost - may_lose)[:10]}"

        status = _cli(cluster, queue, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["queue"] == queue
        # The worker's heartbeat, written to the new primary since the old one died.
        assert report["workers"] and not any("stale" in seen for seen in report["workers"].values())
        listing = _cli(cluster, queue, "dlq", "list", "--json")
        assert listing.returncode == 0 and json.loads(listing.stdout) == []
    finally:
        if worker is not None:
            worker.stop()
        akto_proc.stop()


def _ingested(akto: AktoAdmin) -> dict[str, int]:
    return akto.message_id_counts()


# Sentinel takes this long to notice a primary that stopped answering: long enough that the worker's
# loops are seen stuck first, as with Sentinel's default (30 s) in production.
FREEZE_NOTICED_MS = 3000
# Each Redis command gives up after 1 s; a loop that completes no round for 2 s fails /healthz.
FROZEN_WORKER_ENV = {"AKTO_REDIS_TIMEOUT": "1", "AKTO_WORKER_ROUND_BUDGET": "2"}
DELIVERY_SECONDS = 10.0


@contextlib.contextmanager
def _frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP one Redis process of ours: its sockets stay open and the kernel still accepts
    connections for it, but it answers nothing. SIGCONT whatever happens."""
    assert server.proc is not None and server.proc.alive()
    pid = server.proc.popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _healthz(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    try:
        response = await client.get(url, timeout=1)
    except httpx.HTTPError as exc:
        return 0, repr(exc)
    return response.status_code, response.text


async def _watch_healthz(url: str, seen: list[tuple[float, int, str]], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            status, text = await _healthz(client, url)
            seen.append((time.monotonic(), status, text))
            await asyncio.sleep(0.2)


async def _put(enqueuer: Enqueuer, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    for call_id in ids:
        await enqueuer.put(Record(id=call_id, mode="monitor", request_body={"messages": [{"content": call_id}]}))
    return ids


async def _delivered(akto: AktoAdmin, ids: list[str], within: float) -> float:
    """Seconds until every one of ``ids`` reached Akto; fails past ``within`` seconds."""
    start = time.monotonic()
    missing = set(ids)
    while missing:
        missing -= set(await asyncio.to_thread(_ingested, akto))
        if not missing:
            break
        assert time.monotonic() - start < within, f"{len(missing)} of {len(ids)} not delivered in {within:g}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def test_worker_and_hook_follow_a_frozen_primary(tmp_path: Path) -> None:
    """A primary that stops answering without closing its sockets (SIGSTOP; a partition looks the same):
    the worker's poll and collector are stuck only until their commands time out, /healthz says so
    while they are, and records pushed after the failover reach Akto within 10 s."""
    queue = f"akto:frozen:{uuid.uuid4().hex[:8]}"
    akto_proc, akto = start_fake_akto(tmp_path)
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    try:
        with _cluster(tmp_path, down_after_ms=FREEZE_NOTICED_MS) as cluster:
            env = worker_env(
                akto.url, cluster.url, queue, **FAST_RETRY, **FROZEN_WORKER_ENV, AKTO_WORKER_METRICS_PORT=str(port)
            )
            worker = start_worker("worker-frozen", env, tmp_path)
            try:
                timings = asyncio.run(_freeze_the_primary(cluster, akto, queue, healthz, tmp_path))
            except BaseException:
                print(worker.log()[-5000:])
                raise
            finally:
                worker.stop()
            print(f"frozen-primary timings: {timings}")
    finally:
        akto_proc.stop()


async def _freeze_the_primary(
    cluster: Cluster, akto: AktoAdmin, queue: str, healthz: str, tmp_path: Path
) -> dict[str, float]:
    enqueuer = Enqueuer(cluster.url, queue, 0.5, tmp_path / "spool", 64 * 1024 * 1024, redis_timeout=1)
    seen: list[tuple[float, int, str]] = []
    stop = asyncio.Event()
    try:
        await _delivered(akto, await _put(enqueuer, "before", 5), 30)
        async with httpx.AsyncClient() as client:
            assert (await _healthz(client, healthz))[0] == 200
        watcher = asyncio.create_task(_watch_healthz(healthz, seen, stop))
        with _frozen(cluster.primary):
            frozen_at = time.monotonic()
            # While nothing answers: the hook's writes time out into its spool.
            during = await _put(enqueuer, "during", 10)
            while await cluster.master_port() != cluster.replica.port:
                assert time.monotonic() - frozen_at < 60, "Sentinel did not promote the replica"
                await asyncio.sleep(0.2)
            promoted_at = time.monotonic()
            after = await _put(enqueuer, "after", 20)
            after_took = await _delivered(akto, after, DELIVERY_SECONDS)
            await _delivered(akto, during, 30)
            # Every loop completes its rounds again: /healthz recovers without a restart.
            deadline = time.monotonic() + 10
            while seen[-1][1] != 200:
                assert time.monotonic() < deadline, f"/healthz did not recover: {seen[-1]}"
                await asyncio.sleep(0.2)
        stop.set()
        await watcher
    finally:
        stop.set()
        await enqueuer.close()
    stuck = [(t - frozen_at, text) for t, status, text in seen if status == 503]
    assert stuck, f"/healthz never failed while the worker's loops were stuck: {seen}"
    assert all("has not completed a round" in text for _, text in stuck), stuck
    reported = " ".join(text for _, text in stuck)
    assert "arq's poll" in reported and "the collector" in reported, stuck
    assert stuck[0][0] < promoted_at - frozen_at, "/healthz failed only after the failover"
    return {
        "promoted_after_freeze": round(promoted_at - frozen_at, 2),
        "healthz_503_after_freeze": round(stuck[0][0], 2),
        "after_records_delivered_in": round(after_took, 2),
    }
