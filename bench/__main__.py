"""``python -m bench``: run the benchmark sections, print one table, write BENCHMARKS.md.

python -m bench [--quick] [--only hook|e2e|worker|memory|soak ...] [--no-profile] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.stack import REPO

from . import capacity, e2e, hook, memory, procfs, report, soak, worker
from .context import Bench

SECTIONS: dict[str, Callable[[Bench], report.Section]] = {
    # Sections without proxies run first, on a quieter machine; capacity uses hook's and worker's figures.
    "hook": hook.run,
    "worker": worker.run,
    "e2e": e2e.run,
    "memory": memory.run,
    "soak": soak.run,
    "capacity": capacity.run,
}
# The report lists them in this order.
ORDER = ("e2e", "hook", "worker", "memory", "soak", "capacity")


class MachineLoad:
    """How busy the machine was while a section ran, and how much of that was not this bench.

    Other work on the same 2 cores (another test run, say) moves every number here; this makes it visible
    next to the numbers instead of leaving it to guesswork.
    """

    def __init__(self, bench: Bench) -> None:
        self._bench = bench
        self._redis_pid = bench.redis_pid()
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = procfs.machine_cpu_seconds()
        self._ours0 = self._ours()

    def _ours(self) -> float:
        redis = procfs.cpu_seconds(self._redis_pid) if self._redis_pid else 0.0
        return procfs.own_cpu_seconds(os.getpid()) + redis

    def foreign_cores(self) -> float:
        """Cores busy with work outside the bench's processes, on average over the section."""
        wall = max(1e-9, time.monotonic() - self._t0)
        busy = procfs.machine_cpu_seconds()[0] - self._busy0
        return max(0.0, busy - (self._ours() - self._ours0)) / wall

    def describe(self) -> str:
        wall = max(1e-9, time.monotonic() - self._t0)
        busy, steal = procfs.machine_cpu_seconds()
        busy -= self._busy0
        foreign = max(0.0, busy - (self._ours() - self._ours0))
        warning = (
            " (other work competed with the bench: treat this section's numbers with care)"
            if (foreign / wall > 0.1)
            else ""
        )
        return (
            f"Machine load during this section ({wall:.0f} s): {busy / wall:.2f} of "
            f"{os.cpu_count()} cores busy, {foreign / wall:.2f} of them outside the bench's processes; "
            f"hypervisor steal {(steal - self._steal0) / wall:.1%} of a core{warning}."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run in a few minutes")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="where to write the report")
    args = parser.parse_args(argv)

    chosen = args.only or list(SECTIONS)
    bench = Bench(quick=args.quick, profiling=not args.no_profile)
    print(f"bench run {bench.run_id}: sections {', '.join(chosen)}; logs in {bench.log_dir}", file=sys.stderr)
    started = time.monotonic()
    sections: list[report.Section] = []
    foreign: dict[str, float] = {}
    failed = False
    try:
        for name in chosen:
            t0 = time.monotonic()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            load = MachineLoad(bench)
            try:
                section = SECTIONS[name](bench)
            except Exception:
                # One broken section must not cost the others' numbers; the run still fails at the end.
                failed = True
                traceback.print_exc()
                section = report.Section(name, f"{name} (FAILED, see stderr)")
            if time.monotonic() - t0 >= 5:  # a section of a moment (capacity: arithmetic) says nothing of load
                section.notes.append(load.describe())
                foreign[name] = load.foreign_cores()
            sections.append(section)
            print(
                f"[{time.strftime('%H:%M:%S')}] {name} done in {time.monotonic() - t0:.0f} s; {load.describe()}",
                file=sys.stderr,
            )
    finally:
        bench.close()
    elapsed = time.monotonic() - started

    sections.sort(key=lambda s: ORDER.index(s.key) if s.key in ORDER else len(ORDER))
    print(report.console_table(sections))
    print()
    for note in bench.notes:
        print(f"note: {note}")
    for section in sections:
        for target in section.targets:
            print(f"{target.verdict:4}  {target.goal}: {target.measured} ({target.margin})")
    command = "python -m bench" + (" --quick" if args.quick else "") + "".join(f" --only {o}" for o in args.only or [])
    loaded = {name: cores for name, cores in foreign.items() if cores > 0.1}
    under_load = (
        "Taken under load: other work on this machine kept "
        + ", ".join(f"{cores:.2f} cores busy during {name}" for name, cores in loaded.items())
        + " on average. Ratios measured side by side hold up better than absolute times."
        if loaded
        else ""
    )
    text = report.markdown(sections, command=command, elapsed_s=elapsed, notes=bench.notes, load=under_load)
    report.write(args.out, text)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
