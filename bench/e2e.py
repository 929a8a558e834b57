"""Section 1, end to end through real LiteLLM proxies, one client at a time, Akto answering after 50 ms.

Seven proxies run side by side: no guardrail, a no-op post_call guardrail (LiteLLM's own cost of a
logging guardrail), ours in monitor, block (pre_call) and block (during_call), and LiteLLM's built-in
``guardrail: akto`` in post_call and pre_call+post_call. Each serves two models: LiteLLM's in-process
mock (nothing hides the guardrail's cost) and the fake model server answering after 300 ms (a real
LLM's place on the request path, where during_call can hide the check). Cases are measured in short
interleaved slices, the order rotated every round, so drift on the machine lands on all of them alike.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from . import procfs, profile
from .context import (
    AKTO_DELAY_MS,
    ASK,
    BUILTIN_POST,
    BUILTIN_PRE,
    BUILTIN_PREPOST,
    LABELS,
    MOCK_MODEL,
    NONE,
    NOOP,
    OURS_BLOCK,
    OURS_DURING,
    OURS_MONITOR,
    PROXY_KINDS,
    SLOW_LLM_MS,
    SLOW_MODEL,
    WAIT,
    Bench,
    percentile,
)
from .load import drive
from .report import Row, Section, Target, margin

PRE_CALL_SLACK_MS = 2.0
# Issue 17 §8: reading the whole body must not raise block mode's own cost.
OUR_SHARE_MS = 3.5
DURING_ADDED_MS = 2.0
DURING_TOLERANCE = 0.05
MONITOR_ADDED_MS = 0.7
MONITOR_CPU_MS = 0.2
OUR_FRAMES = ("(akto_hook/", "(akto_ingest/")


@dataclass(frozen=True)
class Case:
    kind: str
    model: str
    stream: bool = False

    @property
    def label(self) -> str:
        return LABELS[self.kind] + (", streamed" if self.stream else "")


@dataclass
class Totals:
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    errors: int = 0

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / max(1, self.n) * 1000


MOCK_CASES = (
    Case(NONE, MOCK_MODEL),
    Case(NOOP, MOCK_MODEL),
    Case(WAIT, MOCK_MODEL),
    Case(ASK, MOCK_MODEL),
    Case(OURS_MONITOR, MOCK_MODEL),
    Case(OURS_BLOCK, MOCK_MODEL),
    Case(OURS_DURING, MOCK_MODEL),
    Case(BUILTIN_POST, MOCK_MODEL),
    Case(BUILTIN_PRE, MOCK_MODEL),
    Case(BUILTIN_PREPOST, MOCK_MODEL),
)
SLOW_CASES = (
    Case(NONE, SLOW_MODEL),
    Case(WAIT, SLOW_MODEL),
    Case(ASK, SLOW_MODEL),
    Case(OURS_MONITOR, SLOW_MODEL),
    Case(OURS_BLOCK, SLOW_MODEL),
    Case(OURS_DURING, SLOW_MODEL),
    Case(BUILTIN_POST, SLOW_MODEL),
    Case(BUILTIN_PRE, SLOW_MODEL),
    Case(BUILTIN_PREPOST, SLOW_MODEL),
    Case(NONE, SLOW_MODEL, stream=True),
    Case(OURS_BLOCK, SLOW_MODEL, stream=True),
    Case(OURS_DURING, SLOW_MODEL, stream=True),
)


def _window(bench: Bench, case: Case, n: int, first_id: int, totals: Totals) -> None:
    proxy = bench.proxies[case.kind]
    cpu0 = procfs.cpu_seconds(proxy.proc.popen.pid)
    result = asyncio.run(
        drive(
            proxy.url,
            n,
            concurrency=1,
            max_seconds=300,
            first_id=first_id,
            model=case.model,
            stream=case.stream,
        )
    )
    totals.cpu_s += procfs.cpu_seconds(proxy.proc.popen.pid) - cpu0
    totals.latencies_s += result.latencies_s
    totals.errors += result.errors


def _measure(
    bench: Bench, cases: tuple[Case, ...], rounds: int, per_round: int, first_id: int, warmup: int
) -> dict[Case, Totals]:
    totals = {case: Totals() for case in cases}
    for case in cases:  # warm-up: connections, LiteLLM's lazy imports and caches (a first request costs 0.3 s)
        _window(bench, case, warmup, first_id, Totals())
    for rnd in range(rounds):
        shift = rnd % len(cases)
        for case in cases[shift:] + cases[:shift]:
            first_id += per_round
            _window(bench, case, per_round, first_id, totals[case])
    return totals


def _our_cpu_share(bench: Bench, seconds: float) -> tuple[float, float, float] | None:
    """py-spy on the monitor proxy under the mock load: the share of its samples in our code, its CPU
    per request meanwhile, and the share of our samples spent writing the record (the hook's RPUSH over
    redis-py's connection)."""
    if not bench.profiling:
        return None
    proxy = bench.proxies[OURS_MONITOR]
    out = bench.log_dir / "profile-proxy-monitor.txt"
    spy = profile.start(proxy.proc.popen.pid, seconds, out)
    time.sleep(1.0)
    cpu0 = procfs.cpu_seconds(proxy.proc.popen.pid)
    result = asyncio.run(drive(proxy.url, 1_000_000, concurrency=1, max_seconds=seconds - 2, first_id=9_000_000))
    cpu = procfs.cpu_seconds(proxy.proc.popen.pid) - cpu0
    profile.finish(spy)
    part = profile.share(out, OUR_FRAMES)
    redis = profile.share(out, ("(redis/", "(akto_hook/recording/rpush.py"), within=OUR_FRAMES)
    return None if part is None else (part, cpu / max(1, result.ok) * 1000, redis or 0.0)


def _rows(section: Section, totals: dict[Case, Totals], llm: str) -> None:
    for case, t in totals.items():
        base = totals[Case(NONE, case.model, case.stream)]
        row = Row(
            case=f"{case.label} @ {llm}",
            n=t.n,
            p50_ms=t.p(50),
            p99_ms=t.p(99),
            ratio_p50=t.p(50) / base.p(50),
            cpu_ms=t.cpu_ms,
            cpu_unit="/req (proxy)",
        )
        row.extra["p50 added ms"] = f"{t.p(50) - base.p(50):+.2f}"
        row.extra["CPU added ms/req"] = f"{t.cpu_ms - base.cpu_ms:+.2f}"
        if t.errors:
            row.extra["client errors"] = str(t.errors)
        section.rows.append(row)


def run(bench: Bench) -> Section:
    section = Section(
        "e2e", f"1. End to end through LiteLLM proxies (one client, Akto answering after {AKTO_DELAY_MS} ms)"
    )
    bench.start_proxies(PROXY_KINDS)
    bench.akto.configure(delay_ms=AKTO_DELAY_MS)
    mock_rounds, slow_rounds, per_round = (3, 2, 5) if bench.quick else (10, 5, 15)
    mock = _measure(bench, MOCK_CASES, mock_rounds, per_round, 0, warmup=20)
    slow = _measure(bench, SLOW_CASES, slow_rounds, per_round * 2 // 3, 1_000_000, warmup=3)
    share = _our_cpu_share(bench, 6 if bench.quick else 20)
    bench.akto.configure(delay_ms=0)
    bench.akto.reset()

    _rows(section, mock, "mock model")
    _rows(section, slow, f"LLM {SLOW_LLM_MS} ms")
    _judge(section, bench, mock, slow, share)
    openings = {kind: bench.breaker_openings(kind) for kind in (OURS_MONITOR, OURS_BLOCK, OURS_DURING)}
    section.notes += [
        "One client at a time, each request's latency until its last byte (a streamed answer: its last "
        f"chunk). {mock_rounds} rounds of {per_round} requests per case with the mock model and {slow_rounds} "
        f"rounds of {per_round * 2 // 3} with the {SLOW_LLM_MS} ms model, interleaved; 'added' is against no "
        "guardrail with the same model (and streaming) in the same run.",
        "CPU is the proxy process's user + system time per request, from /proc. No worker runs beside the "
        "proxies (in production it runs elsewhere); their records wait in Redis.",
        "The mock model answers at once, so there during_call waits for Akto just as pre_call does: it wins "
        "only where the LLM takes longer than Akto, as with the 300 ms model.",
        f"The controls (bench/controls.py) are guardrails of LiteLLM's own kind that do one thing: nothing "
        f"after the response (no-op), wait {AKTO_DELAY_MS} ms before the call (wait), or POST one fixed "
        "check to the fake Akto before the call (ask). They split what any guardrail of that kind costs "
        "in LiteLLM from what ours adds.",
        "Hook breaker openings (Redis slower than enqueue_timeout, records spooled): "
        + ", ".join(f"{LABELS[k]} {n}" for k, n in openings.items())
        + ".",
    ]
    return section


def _judge(
    section: Section,
    bench: Bench,
    mock: dict[Case, Totals],
    slow: dict[Case, Totals],
    share: tuple[float, float, float] | None,
) -> None:
    none = mock[Case(NONE, MOCK_MODEL)]
    for stream in (False, True):
        base, during = slow[Case(NONE, SLOW_MODEL, stream)], slow[Case(OURS_DURING, SLOW_MODEL, stream)]
        pre = slow[Case(OURS_BLOCK, SLOW_MODEL, stream)]
        r50 = during.p(50) / base.p(50)
        kind = "streamed" if stream else "not streamed"
        section.targets.append(
            Target(
                goal=f"block, during_call: p50 within 5 % of no guardrail, LLM {SLOW_LLM_MS} ms / Akto "
                f"{AKTO_DELAY_MS} ms, {kind}",
                measured=f"p50 {during.p(50):.1f} vs {base.p(50):.1f} ms ({r50:.3f}x); pre_call {pre.p(50):.1f} ms "
                f"({pre.p(50) - base.p(50):+.1f} ms)",
                passed=r50 <= 1 + DURING_TOLERANCE,
                margin=f"{abs(1 + DURING_TOLERANCE - r50) * 100:.1f} points "
                f"{'inside' if r50 <= 1 + DURING_TOLERANCE else 'outside'} the 5 % band",
                bound="the check runs while the LLM answers; what is left is LiteLLM's cost of a during_call "
                "guardrail and of waiting on two tasks",
            )
        )
        added = during.p(50) - base.p(50)
        section.targets.append(
            Target(
                goal=f"block, during_call: adds ≤ {DURING_ADDED_MS:g} ms, LLM {SLOW_LLM_MS} ms / Akto "
                f"{AKTO_DELAY_MS} ms, {kind}",
                measured=f"{added:+.2f} ms (p50 {during.p(50):.1f} vs {base.p(50):.1f} ms)",
                passed=added <= DURING_ADDED_MS,
                margin=margin(added, DURING_ADDED_MS, "ms", lower_is_better=True),
                bound="LiteLLM runs the check as a task beside the LLM call and awaits both; the record is "
                "written after the response",
            )
        )
    for cases, llm in ((mock, MOCK_MODEL), (slow, SLOW_MODEL)):
        none_p50 = cases[Case(NONE, llm)].p(50)
        blk, wait, ask = (cases[Case(kind, llm)] for kind in (OURS_BLOCK, WAIT, ASK))
        added = blk.p(50) - none_p50
        goal = AKTO_DELAY_MS + PRE_CALL_SLACK_MS
        name = "mock model" if llm == MOCK_MODEL else f"LLM {SLOW_LLM_MS} ms"
        section.targets.append(
            Target(
                goal=f"block, pre_call: adds ≤ Akto's delay + {PRE_CALL_SLACK_MS:g} ms, one client, {name}",
                measured=f"+{added:.2f} ms (p50 {blk.p(50):.1f} vs {none_p50:.1f} ms); "
                f"{blk.cpu_ms - cases[Case(NONE, llm)].cpu_ms:+.2f} ms CPU/req; built-in pre_call "
                f"{cases[Case(BUILTIN_PRE, llm)].p(50) - none_p50:+.2f} ms",
                passed=added <= goal,
                margin=margin(added, goal, "ms", lower_is_better=True),
                bound=f"the controls, side by side: a pre_call guardrail that only waits {AKTO_DELAY_MS} ms adds "
                f"{wait.p(50) - none_p50:+.2f} ms (LiteLLM's pre_call plumbing and the proxy idling mid-request: "
                f"every pre_call guardrail pays it); one that only POSTs a fixed check to the fake Akto adds "
                f"{ask.p(50) - none_p50:+.2f} ms (the round trip costs {ask.p(50) - wait.p(50):+.2f} ms over the "
                "wait); "
                f"ours adds {blk.p(50) - ask.p(50):+.2f} ms over that control (building the check from the "
                "request, reading the verdict, the record written after the response)",
            )
        )
        share_ms = blk.p(50) - wait.p(50)
        section.targets.append(
            Target(
                goal=f"block, pre_call: our share over a guardrail that only waits {AKTO_DELAY_MS} ms is ≤ "
                f"{OUR_SHARE_MS:g} ms, one client, {name}",
                measured=f"{share_ms:+.2f} ms (ours p50 {blk.p(50):.1f} vs wait control {wait.p(50):.1f} ms); "
                f"CPU {blk.cpu_ms - wait.cpu_ms:+.2f} ms/req over the control",
                passed=share_ms <= OUR_SHARE_MS,
                margin=margin(share_ms, OUR_SHARE_MS, "ms", lower_is_better=True),
                bound=f"of it, the bare POST to Akto (ask control over wait control) {ask.p(50) - wait.p(50):+.2f} "
                f"ms; the rest is building the check, reading the verdict and the record after the response",
            )
        )
    mon, noop = mock[Case(OURS_MONITOR, MOCK_MODEL)], mock[Case(NOOP, MOCK_MODEL)]
    added = mon.p(50) - none.p(50)
    section.targets.append(
        Target(
            goal=f"monitor: adds ≤ {MONITOR_ADDED_MS:g} ms per request, one client, mock model",
            measured=f"{added:+.2f} ms (p50 {mon.p(50):.2f} vs {none.p(50):.2f} ms)",
            passed=added <= MONITOR_ADDED_MS,
            margin=margin(added, MONITOR_ADDED_MS, "ms", lower_is_better=True),
            bound=f"LiteLLM's own cost of any logging guardrail (the no-op control): {noop.p(50) - none.p(50):+.2f} "
            f"ms and {noop.cpu_ms - none.cpu_ms:+.2f} ms CPU/req; ours over the control: "
            f"{mon.p(50) - noop.p(50):+.2f} ms and {mon.cpu_ms - noop.cpu_ms:+.2f} ms CPU/req",
        )
    )
    hook_cpu = mon.cpu_ms - noop.cpu_ms
    measured = f"{hook_cpu:+.2f} ms/req (monitor proxy's CPU minus the no-op control's)"
    judged = hook_cpu
    bound = (
        "judged on the CPU difference between the monitor proxy and the no-op control (py-spy did not run); "
        "the hook's own work per record is measured in-process in section 2"
    )
    if share is not None:
        part, cpu, redis = share
        judged = part * cpu
        measured += f"; py-spy: {part:.1%} of the monitor proxy's samples in our code = {judged:.2f} ms/req"
        bound = (
            f"{redis:.0%} of our samples are the record's RPUSH ({redis * judged:.2f} ms/req), most of "
            "it the socket write itself: on one machine the kernel runs Redis's side of the loopback TCP "
            "send in the proxy's time. Building and serialising the record is the rest "
            f"({(1 - redis) * judged:.2f} ms/req with the event loop's wake-ups)"
        )
    section.targets.append(
        Target(
            goal=f"monitor: the hook costs ≤ {MONITOR_CPU_MS:g} ms of the proxy's CPU per request",
            measured=measured,
            passed=judged <= MONITOR_CPU_MS,
            margin=margin(judged, MONITOR_CPU_MS, "ms", lower_is_better=True),
            bound=bound,
        )
    )
