"""Section 5, capacity: how many records per second one Redis carries, from sections 2 and 3.

Redis runs commands on one core, so its CPU per record is what bounds one Redis. A record costs Redis
twice: the hook's write (an RPUSH, group-committed when puts overlap) and the worker's side (the
collector moving it from the inbox into a job, arq's job bookkeeping). Both were measured from the
Redis server's own CPU time (/proc) while sections 2 and 3 ran.
"""

from __future__ import annotations

from .context import Bench
from .report import Row, Section

# Plan Redis at half a core: room for bursts, a replica's sync and a worker backlog draining.
PLANNED_CORE_SHARE = 0.5


def run(bench: Bench) -> Section:
    section = Section("capacity", "5. Capacity: records per second one Redis carries")
    f = bench.figures
    needed = ("redis_write_ms@1", "redis_write_ms@64", "redis_worker_ms@record", "redis_worker_ms@batch")
    if not all(k in f for k in needed):
        section.notes.append(
            "Needs sections hook and worker in the same run (python -m bench --only hook --only worker)."
        )
        return section
    parts = (
        ("hook write, alone (one RPUSH per record)", f["redis_write_ms@1"]),
        ("hook write, 64 in flight (group-committed)", f["redis_write_ms@64"]),
        ("worker side, per-record delivery", f["redis_worker_ms@record"]),
        ("worker side, batch delivery", f["redis_worker_ms@batch"]),
    )
    for label, ms in parts:
        section.rows.append(Row(case=f"Redis CPU: {label}", cpu_ms=ms, cpu_unit="/rec (Redis)"))
    for mode, write in (("record", "redis_write_ms@1"), ("batch", "redis_write_ms@1"), ("batch", "redis_write_ms@64")):
        total = f[write] + f[f"redis_worker_ms@{mode}"]
        writes = "alone" if write.endswith("@1") else "grouped"
        row = Row(case=f"one Redis, {mode} delivery, hook writes {writes}", cpu_ms=total, cpu_unit="/rec (Redis)")
        row.rate = 1000 / total
        row.rate_unit = "rec/s per Redis core"
        row.extra["planned rec/s (half a core)"] = f"{PLANNED_CORE_SHARE * 1000 / total:,.0f}"
        section.rows.append(row)
        bench.figures[f"redis_capacity@{mode}-{writes}"] = 1000 / total
    section.notes += [
        "rec/s per Redis core = 1 / (Redis CPU per record, write + worker side): the rate at which one Redis "
        f"would be busy all the time. Plan for {PLANNED_CORE_SHARE:.0%} of that (see README, Deploy).",
        "'alone' is the worst case for writes (every request on its own, one RPUSH each); a busy proxy "
        "group-commits and costs Redis less per record.",
    ]
    return section
