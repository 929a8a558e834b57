"""Section 3, worker throughput and memory: how fast 1 or 2 ``arq akto_worker.WorkerSettings``
processes empty a backlog, and their peak RSS meanwhile.

Records are written first to a staging list and then RENAMEd onto ``<queue>:inbox`` once the workers
are up, so the whole backlog appears at one instant and the clock starts there. The clock stops when
the fake Akto (answering after 50 ms) has ingested every record. CPU per record comes from /proc for
the workers, the fake Akto and Redis: all of them share the machine's cores.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from akto_hook.views import capture
from akto_ingest.config import WorkerConfig
from tests.stack import worker_env

from . import procfs
from .context import AKTO_DELAY_MS, Bench
from .hook import litellm_kwargs
from .report import Row, Section, Target, margin

RECORD_GOAL = 1_500
BATCH_GOAL = 10_000
BACKLOG = 60_000
BACKLOG_GOAL_S = 60.0
WORKER_RSS_GOAL_MB = 100.0
# The worker's own defaults, read from its settings so the bench follows them when they change.
DEFAULT_CONCURRENCY = int(WorkerConfig.model_fields["concurrency"].default)
DEFAULT_BATCH = int(WorkerConfig.model_fields["batch_size"].default)
_ID_TOKEN = "bench-00000000"


@dataclass
class Drain:
    label: str
    mode: str
    procs: int
    n: int
    elapsed_s: float = 0.0
    delivered: int = 0
    duplicates: int = 0
    worker_cpu_s: float = 0.0
    akto_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    peak_rss_mb: list[float] = field(default_factory=list)
    inflight: list[int] = field(default_factory=list)  # requests the fake Akto was holding, sampled
    machine_busy_s: float = 0.0  # CPU seconds the whole machine spent during the drain
    idle_rss_mb: float = 0.0  # the first worker's VmRSS once started, before the backlog appeared
    timed_out: bool = False
    concurrency: int = 0

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s else 0.0

    def per_record_ms(self, cpu_s: float) -> float:
        return cpu_s / max(1, self.delivered) * 1000


def records_held(bench: Bench, mode: str, env: Mapping[str, str] | None = None) -> int:
    """How many records a worker holds at most: arq's max_jobs (computed by the worker's own code
    from the same environment) times the records per job."""
    from akto_worker.lifecycle import max_jobs  # the worker's code, imported only here

    config = WorkerConfig.load(
        env=worker_env(bench.akto.url, bench.redis_url, "probe", AKTO_DELIVERY_MODE=mode, **(env or {}))
    )
    return max_jobs(config) * config.batch_size


def preload(bench: Bench, key: str, n: int) -> None:
    """RPUSH ``n`` distinct records (the size the hook produces) in pipelines."""
    template = capture.from_success(litellm_kwargs(0), None, "block").to_json()
    assert _ID_TOKEN in template
    pipe = bench.redis.pipeline(transaction=False)
    for start in range(0, n, 1000):
        pipe.rpush(key, *(template.replace(_ID_TOKEN, f"bench-{i:08d}") for i in range(start, min(n, start + 1000))))
        pipe.execute()


def drain(
    bench: Bench,
    label: str,
    *,
    mode: str,
    procs: int,
    n: int,
    env: Mapping[str, str] | None = None,
) -> Drain:
    result = Drain(label, mode, procs, n)
    queue = bench.queue(f"w{int(time.time() * 1000) % 10_000_000}")
    akto = bench.akto
    akto.reset()
    akto.configure(delay_ms=AKTO_DELAY_MS)
    staging = f"{queue}:staging"
    preload(bench, staging, n)
    workers = [
        bench.worker(f"worker-{label.replace(' ', '-')}-{i}", queue, AKTO_DELIVERY_MODE=mode, **(env or {}))
        for i in range(procs)
    ]
    pids = [w.popen.pid for w in workers]
    cpu0 = [procfs.cpu_seconds(p) for p in pids]
    akto0 = procfs.cpu_seconds(bench.akto_pid)
    redis0 = bench.redis_cpu_seconds()
    result.peak_rss_mb = [procfs.rss_mb(p) for p in pids]
    result.idle_rss_mb = result.peak_rss_mb[0]
    busy0, _ = procfs.machine_cpu_seconds()
    started = time.monotonic()
    bench.redis.rename(staging, f"{queue}:inbox")
    deadline = started + max(120.0, n / 300)  # bounded: a stuck worker fails the case, not the run
    stats = akto.stats()
    while int(stats["ingested"]) < n:
        if time.monotonic() > deadline:
            result.timed_out = True
            break
        time.sleep(0.1)
        rss = [procfs.rss_mb(p) for p in pids]
        result.peak_rss_mb = [max(a, b) for a, b in zip(result.peak_rss_mb, rss, strict=True)]
        stats = akto.stats()
        result.inflight.append(int(stats["pending"]))
    result.elapsed_s = time.monotonic() - started
    result.machine_busy_s = procfs.machine_cpu_seconds()[0] - busy0
    result.worker_cpu_s = sum(procfs.cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
    result.akto_cpu_s = procfs.cpu_seconds(bench.akto_pid) - akto0
    result.redis_cpu_s = bench.redis_cpu_seconds() - redis0
    result.delivered = int(stats["ingested"])
    result.duplicates = int(stats["duplicates"])
    for w in workers:
        bench.stop(w)
    bench.delete_keys(queue)
    akto.reset()
    return result


def _row(d: Drain) -> Row:
    row = Row(
        case=d.label,
        n=d.n,
        rate=d.rate,
        rate_unit="rec/s",
        cpu_ms=d.per_record_ms(d.worker_cpu_s),
        cpu_unit="/rec (worker)",
        rss_mb=max(d.peak_rss_mb),
    )
    row.extra["drain s"] = f"{d.elapsed_s:.1f}"
    # Little's law made visible: records/s ≈ requests in flight / Akto's latency.
    row.extra["Akto requests in flight"] = f"{sum(d.inflight) / max(1, len(d.inflight)):.0f}"
    row.extra["rec/s per proc"] = f"{d.rate / d.procs:,.0f}"
    # What one worker process could do with a core to itself: the CPU bound, apart from Akto's latency.
    row.extra["CPU ceiling rec/s/proc"] = f"{1000 / max(1e-9, d.per_record_ms(d.worker_cpu_s)):,.0f}"
    row.extra["fake Akto CPU ms/rec"] = f"{d.per_record_ms(d.akto_cpu_s):.3f}"
    row.extra["fake Akto core use"] = f"{d.akto_cpu_s / d.elapsed_s:.0%}"
    row.extra["Redis CPU ms/rec"] = f"{d.per_record_ms(d.redis_cpu_s):.4f}"
    if d.duplicates:
        row.extra["duplicates"] = str(d.duplicates)
    if d.timed_out:
        row.extra["TIMED OUT"] = f"{d.delivered:,}/{d.n:,}"
    return row


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    mode: str
    procs: int
    backlog: bool  # True: the 60,000-record backlog; False: the smaller per-record count


CASES = (
    Case("record1", "per-record, 1 proc", "record", 1, False),
    Case("record2", "per-record, 2 procs (backlog)", "record", 2, True),
    Case("batch1", "batch, 1 proc", "batch", 1, True),
)


def run(bench: Bench) -> Section:
    section = Section("worker", f"3. Worker throughput and memory (fake Akto answering after {AKTO_DELAY_MS} ms)")
    n_record = 3_000 if bench.quick else 20_000
    n_backlog = 6_000 if bench.quick else BACKLOG
    runs: dict[str, Drain] = {}
    for case in CASES:
        n = n_backlog if case.backlog else n_record
        runs[case.key] = drain(bench, case.label, mode=case.mode, procs=case.procs, n=n)
        runs[case.key].concurrency = DEFAULT_CONCURRENCY
    section.rows = [_row(d) for d in runs.values()]
    for mode, key in (("record", "record1"), ("batch", "batch1")):
        bench.figures[f"redis_worker_ms@{mode}"] = runs[key].per_record_ms(runs[key].redis_cpu_s)
        bench.figures[f"worker_rate@{mode}"] = runs[key].rate
    _judge(section, runs, bench)
    section.notes += [
        f"Workers run with their defaults (AKTO_WORKER_CONCURRENCY={DEFAULT_CONCURRENCY}, AKTO_BATCH_SIZE="
        f"{DEFAULT_BATCH}). Records are block-mode records of the size the hook writes.",
        "'Akto requests in flight' is the mean number of requests the fake Akto was holding, sampled every "
        f"100 ms. Per record, records/s ≈ in flight / {AKTO_DELAY_MS / 1000:g} s (Little's law); in batch mode "
        "each request carries up to a batch of records.",
        "'CPU ceiling' = 1 / worker CPU per record: the rate one process could reach with a core to itself. "
        "RSS MB is the worker's peak VmRSS during the drain (the largest of the processes). Redis CPU ms/rec "
        "is the Redis server's CPU per record delivered: the collector moving records into jobs, and arq's "
        "job bookkeeping.",
    ]
    return section


def _inflight(d: Drain) -> float:
    return sum(d.inflight) / max(1, len(d.inflight))


def _bound(d: Drain) -> str:
    """What limited one drain, read off its measurements rather than assumed."""
    worker_core = d.worker_cpu_s / d.elapsed_s / d.procs
    akto_core = d.akto_cpu_s / d.elapsed_s
    machine = d.machine_busy_s / d.elapsed_s
    facts = (
        f"{_inflight(d):.0f} Akto requests in flight on average against {d.concurrency} slots per process; "
        f"each worker process at {worker_core:.0%} of a core; the fake Akto at {akto_core:.0%} of a core; the "
        f"machine {machine:.2f} of 2 cores busy in all"
    )
    if machine >= 1.8:
        verdict = "the machine's 2 cores, shared by the worker(s), the fake Akto, Redis and anything else running"
    elif worker_core >= 0.85:
        verdict = "the worker's own CPU"
    elif akto_core >= 0.85:
        verdict = "the fake Akto's CPU (one Python process), not the worker"
    else:
        verdict = "neither CPU is full: arq claims jobs on a 50 ms poll and each job's records finish in waves"
    return f"{verdict}. Measured: {facts}."


def _judge(section: Section, runs: dict[str, Drain], bench: Bench) -> None:
    rec1, rec2, bat1 = runs["record1"], runs["record2"], runs["batch1"]
    section.targets.append(
        Target(
            goal=f"per-record delivery ≥ {RECORD_GOAL:,} records/s per worker process",
            measured=f"{rec1.rate:,.0f} rec/s ({rec2.rate / 2:,.0f}/proc with 2 procs)",
            passed=rec1.rate >= RECORD_GOAL,
            margin=margin(rec1.rate, RECORD_GOAL, "rec/s", lower_is_better=False),
            bound=_bound(rec1),
        )
    )
    section.targets.append(
        Target(
            goal=f"batch delivery ≥ {BATCH_GOAL:,} records/s per worker process",
            measured=f"{bat1.rate:,.0f} rec/s",
            passed=bat1.rate >= BATCH_GOAL,
            margin=margin(bat1.rate, BATCH_GOAL, "rec/s", lower_is_better=False),
            bound=_bound(bat1),
        )
    )
    full = rec2.n == BACKLOG
    section.targets.append(
        Target(
            goal=f"{BACKLOG:,}-record backlog drained in ≤ {BACKLOG_GOAL_S:g} s with 2 processes (per-record)",
            measured=f"{rec2.elapsed_s:.1f} s for {rec2.n:,} records ({rec2.rate:,.0f} rec/s)",
            passed=(rec2.elapsed_s <= BACKLOG_GOAL_S and not rec2.timed_out) if full else None,
            margin=margin(rec2.elapsed_s, BACKLOG_GOAL_S, "s", lower_is_better=True)
            if full
            else "only measured in the full run",
            bound=_bound(rec2),
        )
    )
    peak, label = max((max(d.peak_rss_mb), d.label) for d in runs.values())
    held = {mode: records_held(bench, mode) for mode in ("record", "batch")}
    section.targets.append(
        Target(
            goal=f"worker RSS ≤ {WORKER_RSS_GOAL_MB:g} MB (default settings, full-speed backlog)",
            measured=f"peak {peak:.1f} MB ({label})",
            passed=peak <= WORKER_RSS_GOAL_MB,
            margin=f"{WORKER_RSS_GOAL_MB - peak:+.1f} MB of headroom",
            bound=f"the records a worker holds at once (arq's max_jobs x records per job: {held['record']:,} "
            f"per-record, {held['batch']:,} batch) on top of {min(d.idle_rss_mb for d in runs.values()):.0f} MB idle",
        )
    )
