"""A bounded closed-loop load generator for a LiteLLM proxy on this machine (aiohttp).

``concurrency`` clients each send one request, wait for the answer, and send the next, until ``n``
requests were sent or ``max_seconds`` passed. Only loopback addresses are accepted as targets.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import aiohttp

from tests.stack import MASTER_KEY

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != 200)


def _body(i: int, model: str, stream: bool) -> dict[str, object]:
    # A distinct prompt per request, so nothing on the way can answer from a cache.
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": f"Hello, how are you? ({i})"}]}
    if stream:
        body["stream"] = True
    return body


async def drive(
    url: str,
    n: int,
    *,
    concurrency: int,
    max_seconds: float,
    first_id: int = 0,
    model: str = "gpt-3.5-turbo",
    stream: bool = False,
) -> LoadResult:
    """Latency is until the last byte (a streamed answer: its last chunk)."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"refusing to load {host}: the bench only targets this machine")
    result = LoadResult()
    ids = itertools.count(first_id)
    sent = itertools.count()
    deadline = time.monotonic() + max_seconds
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    endpoint = f"{url}/v1/chat/completions"

    async def client(session: aiohttp.ClientSession) -> None:
        while next(sent) < n:
            if time.monotonic() > deadline:
                result.timed_out = True
                return
            started = time.perf_counter()
            try:
                async with session.post(endpoint, json=_body(next(ids), model, stream), headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 599
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] += 1

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result
