"""Fault injection: steady traffic through a real LiteLLM proxy (the hook in monitor mode) into a real
Redis and real worker processes, one fault at a time; afterwards every record must be at Akto or in
the dead-letter store. The table of figures is printed at the end of the run."""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis import Redis

from akto_ingest import dlq
from akto_ingest.queue import inbox_key
from akto_ingest.record import Record
from tests.stack import AKTO_KEY, MASTER_KEY, wait_until

from .conftest import RESULTS, FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.integration]

DRAIN_TIMEOUT = 150


@dataclass
class Traffic:
    """Bounded steady load: ``threads`` clients, each sending one request after another."""

    stack: FaultStack
    prompt: str = "steady traffic"
    threads: int = 4
    pause: float = 0.05
    max_seconds: float = 120
    ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = client.post(
                        f"{self.stack.proxy.url}/v1/chat/completions",
                        json={"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": self.prompt}]},
                        headers={"Authorization": f"Bearer {MASTER_KEY}", "Cookie": "sid=fault-cookie-secret"},
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    continue
                elapsed = time.monotonic() - started
                with self._lock:
                    self.latencies.append(elapsed)
                    if response.status_code == 200:
                        self.ids.append(response.headers["x-litellm-call-id"])
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(self.pause)

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        workers = [threading.Thread(target=self._client, daemon=True) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join(60)

    def p99_ms(self) -> float:
        if len(self.latencies) < 2:
            return 0.0
        return round(statistics.quantiles(self.latencies, n=100)[98] * 1000, 1)


def _redis(stack: FaultStack) -> Redis:
    return Redis.from_url(stack.redis.url)


def _dead_letters(stack: FaultStack) -> dict[str, dlq.DeadLetter]:
    async def read() -> dict[str, dlq.DeadLetter]:
        from redis.asyncio import Redis as AsyncRedis

        client = AsyncRedis.from_url(stack.redis.url)
        try:
            ids = await dlq.all_ids(client, stack.proxy.queue)
            return {d.id: d for d in await dlq.get_many(client, stack.proxy.queue, ids)}
        finally:
            await client.aclose()

    return asyncio.run(read())


def _settle(
    stack: FaultStack, fault: str, produced: list[str], traffic: Traffic, expect_dead: Callable[[str], bool]
) -> None:
    """Wait until every produced record is at Akto or dead-lettered, then record the row."""

    def accounted() -> bool:
        counts = stack.akto.message_id_counts()
        dead = _dead_letters(stack)
        return all(cid in counts or cid in dead for cid in produced)

    try:
        wait_until(accounted, DRAIN_TIMEOUT, interval=1, what=f"{fault}: every record delivered or dead-lettered")
    finally:
        counts = stack.akto.message_id_counts()
        dead = _dead_letters(stack)
        delivered = [cid for cid in produced if cid in counts]
        dead_here = [cid for cid in produced if cid in dead and cid not in counts]
        lost = [cid for cid in produced if cid not in counts and cid not in dead]
        RESULTS.append(
            {
                "fault": fault,
                "produced": len(produced),
                "delivered": len(delivered),
                "dead_lettered": len(dead_here),
                "duplicates": sum(counts[cid] - 1 for cid in delivered),
                "lost": len(lost),
                "p99_ms": traffic.p99_ms(),
                "requests_ok": f"{len(traffic.latencies)}/{len(traffic.latencies) + len(traffic.failures)}",
            }
        )
    assert not lost, f"{fault}: {len(lost)} records lost, e.g. {lost[:3]}"
    unexpected = [cid for cid in dead_here if not expect_dead(cid)]
    assert not unexpected, f"{fault}: unexpected dead letters {[dead[c].reason for c in unexpected][:5]}"
    assert not traffic.failures, f"{fault}: requests failed: {traffic.failures[:3]}"


def _never(_: str) -> bool:
    return False


def test_baseline_no_fault(fault_stack: FaultStack) -> None:
    traffic = Traffic(fault_stack)
    with traffic.running():
        time.sleep(5)
    _settle(fault_stack, "none (baseline)", traffic.ids, traffic, _never)


def test_redis_unreachable_at_the_hook(fault_stack: FaultStack) -> None:
    traffic = Traffic(fault_stack)
    with traffic.running():
        time.sleep(2)
        fault_stack.redis.stop()
        time.sleep(8)
        fault_stack.redis.start(fault_stack.log_dir)
        time.sleep(3)
    assert "spooling records" in fault_stack.proxy.proc.log()
    _settle(fault_stack, "Redis down 8 s (hook spools)", traffic.ids, traffic, _never)
    assert not list((fault_stack.log_dir / "spool").rglob("*.jsonl")), "spool replayed and emptied"


def test_akto_down(fault_stack: FaultStack) -> None:
    traffic = Traffic(fault_stack)
    with traffic.running():
        time.sleep(1)
        fault_stack.akto.down(10)
        time.sleep(12)
    _settle(fault_stack, "Akto down 10 s", traffic.ids, traffic, _never)


@pytest.mark.parametrize(
    ("fault", "during", "after"),
    [
        ("Akto 503 for 8 s", {"status": 503}, {"status": None}),
        # Slower than the workers' 2 s delivery timeout: every try times out on our side.
        ("Akto slower than timeout 8 s", {"delay_ms": 3000}, {"delay_ms": 0}),
    ],
)
def test_akto_misbehaving(fault_stack: FaultStack, fault: str, during: dict[str, Any], after: dict[str, Any]) -> None:
    traffic = Traffic(fault_stack)
    with traffic.running():
        time.sleep(1)
        fault_stack.akto.configure(**during)
        time.sleep(8)
        fault_stack.akto.configure(**after)
        time.sleep(1)
    _settle(fault_stack, fault, traffic.ids, traffic, _never)


def test_worker_sigkill_mid_delivery(fault_stack: FaultStack) -> None:
    traffic = Traffic(fault_stack)
    victim = fault_stack.workers[0]
    redis = _redis(fault_stack)
    with traffic.running():
        fault_stack.akto.configure(delay_ms=1500)  # keep deliveries in flight when the kill lands
        time.sleep(4)
        in_flight = _jobs_in_progress(redis)
        victim.stop(signal.SIGKILL)
        killed_ms = int(time.time() * 1000)
        fault_stack.workers.remove(victim)
        time.sleep(2)
        fault_stack.akto.configure(delay_ms=0)
        time.sleep(3)  # the surviving worker finishes what it held; the killed worker's jobs stay claimed
    # The killed worker's jobs are those still claimed now: nobody is left to finish them.
    stranded = [cid for job, ids in in_flight.items() if redis.exists(in_progress_key_prefix + job) for cid in ids]
    at_akto = fault_stack.akto.message_id_counts()
    undelivered = [cid for cid in stranded if cid not in at_akto]
    assert undelivered, "the kill landed while no delivery of the killed worker was in flight"
    fault_stack.add_worker()
    # The killed worker's claimed jobs come back after arq's in-progress timeout (job timeout + 10 s).
    _settle(fault_stack, "worker SIGKILL mid-delivery", traffic.ids, traffic, _never)
    # What the killed worker had in flight was not counted at Akto; the re-run delivered it.
    stored = {r["message_id"]: r["received_at"] for r in fault_stack.akto.records() if r.get("ingested")}
    assert all(stored[cid] > killed_ms for cid in undelivered)


def _jobs_in_progress(redis: Redis) -> dict[str, list[str]]:
    """Claimed arq jobs: job id -> the call ids of its records."""
    jobs = {}
    for key in redis.scan_iter(match=in_progress_key_prefix + "*"):
        job_id = key.decode().removeprefix(in_progress_key_prefix)
        payload = redis.get(job_key_prefix + job_id)
        if isinstance(payload, bytes):
            records, _attempt = json.loads(payload)["a"]
            jobs[job_id] = [json.loads(record)["id"] for record in records]
    return jobs


def test_worker_sigterm_drains(fault_stack: FaultStack) -> None:
    traffic = Traffic(fault_stack)
    victim = fault_stack.workers[0]
    with traffic.running():
        fault_stack.akto.configure(delay_ms=800)
        time.sleep(3)
        started = time.monotonic()
        before_stop = len(victim.log())
        code = victim.stop(signal.SIGTERM, timeout=90)
        drain_seconds = time.monotonic() - started
        fault_stack.workers.remove(victim)
        fault_stack.akto.configure(delay_ms=0)
    fault_stack.add_worker()
    assert code == 0, victim.log()[-2000:]
    assert "Traceback" not in victim.log()[before_stop:], victim.log()[-2000:]
    assert drain_seconds < 60
    _settle(fault_stack, "worker SIGTERM (graceful)", traffic.ids, traffic, _never)


def test_poison_and_permanent_failures(fault_stack: FaultStack) -> None:
    redis = _redis(fault_stack)
    queue = fault_stack.proxy.queue
    marker = fault_stack.log_dir / "pickle-executed"
    # A pickled arq job whose unpickling would create a file: it must be stored, never run.
    pickled_id = uuid.uuid4().hex
    redis.set(f"arq:job:{pickled_id}", pickle.dumps(_Exploit(str(marker))))
    redis.zadd(queue, {pickled_id: int(time.time() * 1000)})
    poison_ids = [f"poison-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    redis.rpush(inbox_key(queue), json.dumps({"id": poison_ids[0], "mode": "nonsense"}))
    redis.rpush(inbox_key(queue), json.dumps({"id": poison_ids[1], "mode": "monitor", "status_code": "x"}))
    redis.rpush(inbox_key(queue), b"not json at all {")

    # Past what any Akto endpoint takes (a 6 MiB string): dead-lettered whole, never sent.
    huge = Record(id=f"huge-{uuid.uuid4().hex[:8]}", mode="monitor", request_body={"p": "x" * (6 * 1024 * 1024)})
    redis.rpush(inbox_key(queue), huge.to_json())

    # Past http-proxy's limits only (a 300 KiB prompt): delivered through ingestData.
    big = Traffic(fault_stack, prompt="x" * (300 * 1024), threads=1, pause=0.5, max_seconds=2)
    with big.running():
        time.sleep(2)
    refused = Traffic(fault_stack)
    with refused.running():
        fault_stack.akto.configure(status=422)
        time.sleep(3)
        fault_stack.akto.configure(status=None)
    produced = [*poison_ids, huge.id, *big.ids, *refused.ids]
    merged = Traffic(fault_stack, ids=produced, latencies=big.latencies + refused.latencies)
    merged.failures = big.failures + refused.failures

    def expected(cid: str) -> bool:
        letter = _dead_letters(fault_stack)[cid]
        if cid in poison_ids:
            return letter.reason == "invalid_record"
        if cid == huge.id:
            return letter.reason == "too_large" and letter.record == huge.to_json()
        return cid in refused.ids and letter.reason == "rejected" and letter.last_status == 422

    _settle(fault_stack, "poison + 422 + oversized", produced, merged, expected)
    reasons = {d.reason for d in _dead_letters(fault_stack).values()}
    assert "undecodable_job" in reasons, reasons
    assert not marker.exists(), "a pickled job was unpickled"
    assert big.ids and all(fault_stack.akto.ingested_for(cid)[0]["endpoint"] == "ingestData" for cid in big.ids)
    assert huge.id in _dead_letters(fault_stack)


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_no_secret_is_written_anywhere(fault_stack: FaultStack) -> None:
    """Credentials never reach logs, dead letters or the records Akto stores, on the delivered path and
    the dead-letter path alike. The traffic carries a master key and a cookie."""
    traffic = Traffic(fault_stack, threads=2)
    with traffic.running():
        time.sleep(2)
        fault_stack.akto.configure(status=422)  # these records become dead letters
        time.sleep(2)
        fault_stack.akto.configure(status=None)
    _settle(fault_stack, "credentials in traffic (no leak)", traffic.ids, traffic, lambda cid: True)
    dead = _dead_letters(fault_stack)
    mine_dead = [dead[cid] for cid in traffic.ids if cid in dead]
    mine_at_akto = [r for r in fault_stack.akto.records() if r.get("message_id") in set(traffic.ids)]
    assert mine_dead and mine_at_akto, "the traffic took neither path"
    assert all("user-agent" in json.loads(r["body"]["requestHeaders"]) for r in mine_at_akto)

    secrets = [MASTER_KEY, AKTO_KEY, "fault-cookie-secret"]
    leaks = []
    for path in fault_stack.log_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            leaks += [f"{path.name}: {s}" for s in secrets if s in text and not path.name.endswith(".yaml")]
    for letter in dead.values():
        leaks += [f"dead letter {letter.id}" for s in secrets if s in letter.model_dump_json()]
    bodies = json.dumps([r["body"] for r in fault_stack.akto.records()])
    leaks += [f"record at Akto: {s}" for s in secrets if s in bodies]
    assert not leaks, leaks
