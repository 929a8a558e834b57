"""``python -m bench.instructions``: the hook's own CPU per request, as instructions counted by callgrind.

Wall-clock and even CPU-time figures move with whatever else runs on the machine; instruction counts
do not. Each case runs twice under ``valgrind --tool=callgrind`` (N1 and N2 requests, same start-up),
and the difference divided by N2 - N1 is what one request costs, start-up and imports cancelled out:

- ``monitor``: ``capture.from_success`` + ``Enqueuer.put`` (building the record from LiteLLM's logging
  kwargs, serialising it, one RPUSH to the local Redis and its reply), one request at a time;
- ``check``: ``capture.from_request`` + ``InlineCheck.check`` (block mode's pre_call work: the record,
  the Akto envelope, the aiohttp POST to a fake Akto in another process, reading the verdict).

User-space instructions of this process only: the kernel's share of the socket calls, Redis's and the
fake Akto's work are not in it. LiteLLM is not imported (it would take minutes under valgrind): the
hook's modules are loaded without the package's ``__init__``, which is all that imports LiteLLM.
Opt-in, not part of ``make bench``: it takes a few minutes. Needs valgrind and the local Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from tests.stack import REPO, start_fake_akto

CASES = ("monitor", "check")
WARM_UP = 50


def _load_hook_without_litellm() -> None:
    package = types.ModuleType("akto_hook")
    package.__path__ = [str(REPO / "hook" / "akto_hook")]
    sys.modules["akto_hook"] = package


def _pre_call_data(i: int) -> dict[str, Any]:
    from .hook import litellm_kwargs

    kwargs = litellm_kwargs(i)
    request = kwargs["litellm_params"]["proxy_server_request"]
    return {
        **request["body"],
        "litellm_call_id": kwargs["litellm_call_id"],
        "metadata": kwargs["litellm_params"]["metadata"],
        "proxy_server_request": request,
    }


async def _drive(case: str, n: int, redis_url: str, akto_url: str, spool: Path) -> None:
    """The measured loop (runs inside valgrind)."""
    _load_hook_without_litellm()
    from pydantic import SecretStr

    from akto_hook.recording.enqueue import Enqueuer
    from akto_hook.verdicts.check import InlineCheck
    from akto_hook.views import capture
    from akto_ingest.akto_client import AktoClient
    from akto_ingest.config import AktoSettings

    from .hook import litellm_kwargs

    if case == "monitor":
        queue = f"akto:bench:instructions:{os.getpid()}"
        # A long timeout: valgrind runs code ~50x slower, and a spooled record would be another path.
        enqueuer = Enqueuer(redis_url, queue, 60.0, spool, 1 << 26)
        kwargs = [litellm_kwargs(i) for i in range(64)]
        for i in range(WARM_UP + n):
            if not await enqueuer.put(capture.from_success(kwargs[i % 64], None, "monitor")):
                raise SystemExit("a record was not confirmed in Redis")
        await enqueuer.close()
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url)
        await redis.delete(f"{queue}:inbox")
        await redis.aclose()
        return
    akto = AktoSettings(akto_base_url=akto_url, akto_api_key=SecretStr("bench-instructions"))
    client = AktoClient(akto, timeout=60)
    check = InlineCheck(client, akto)
    data = [_pre_call_data(i) for i in range(64)]
    for i in range(WARM_UP + n):
        decision = await check.check(capture.from_request(data[i % 64], "block"))
        if decision.failure is not None:
            raise SystemExit(f"the check failed: {decision.failure}")
    await client.close()


def _count(case: str, n: int, env: dict[str, str], out: Path) -> int:
    args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    args += [sys.executable, "-m", "bench.instructions", "--drive", case, str(n)]
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"{case} x{n} under callgrind failed:\n{result.stderr[-3000:]}")
    return int(found.group(1))


def measure(cases: tuple[str, ...], n1: int, n2: int, redis_url: str) -> dict[str, int]:
    """Instructions per request for each case (runs valgrind 2 x len(cases) times)."""
    per_request = {}
    with tempfile.TemporaryDirectory(prefix="akto-instructions-") as tmp:
        log_dir = Path(tmp)
        akto_proc, akto = start_fake_akto(log_dir, api_key="bench-instructions")
        try:
            env = {
                **os.environ,
                "PYTHONHASHSEED": "0",  # the same dict and set layouts in both runs
                "BENCH_REDIS_URL": redis_url,
                "BENCH_AKTO_URL": akto.url,
                "BENCH_SPOOL": str(log_dir / "spool"),
            }
            for case in cases:
                low = _count(case, n1, env, log_dir / f"{case}.{n1}.out")
                high = _count(case, n2, env, log_dir / f"{case}.{n2}.out")
                per_request[case] = (high - low) // (n2 - n1)
        finally:
            akto_proc.stop()
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--n", nargs=2, type=int, default=[100, 500], metavar=("N1", "N2"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--drive", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        case, n = args.drive
        env = os.environ
        asyncio.run(_drive(case, int(n), env["BENCH_REDIS_URL"], env["BENCH_AKTO_URL"], Path(env["BENCH_SPOOL"])))
        return
    n1, n2 = args.n
    for case, count in measure(tuple(args.cases), n1, n2, args.redis_url).items():
        print(f"{case}: {count:,} instructions per request (callgrind, {n2} - {n1} requests)")


if __name__ == "__main__":
    main()
