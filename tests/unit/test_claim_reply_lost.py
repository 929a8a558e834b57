"""The claim script's reply lost with its connection: redis-py sends the script again."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from akto_ingest.connections import outage_retry
from akto_ingest.queue import Claimer, decode_job, inbox_key, push


class ReplyDropper:
    """A TCP relay to Redis that closes the client's connection instead of passing on the first
    integer reply to a script call: Redis ran the script, the client never hears of it."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        script_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if b"EVALSHA" in data.upper():
                    script_sent.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if script_sent.is_set() and data.startswith(b":") and not self.dropped:
                    self.dropped += 1
                    client_w.transport.abort()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        server_w.close()
        client_w.close()


async def test_a_claim_whose_reply_is_lost_loses_no_record(real_redis: Any, queue_name: str) -> None:
    records = [f'{{"id":"r{n}","mode":"block"}}' for n in range(6)]
    await push(real_redis, queue_name, records)
    host, port = (
        real_redis.connection_pool.connection_kwargs["host"],
        real_redis.connection_pool.connection_kwargs["port"],
    )
    relay = ReplyDropper(host, port)
    relay_port = await relay.start()
    # The worker's own connection settings (worker_pool): redis-py retries a dropped command.
    url = f"redis://127.0.0.1:{relay_port}/0"
    worker_redis = Redis.from_url(url, socket_connect_timeout=1, **outage_retry(url))
    try:
        claimer = Claimer(worker_redis, queue_name, batch_size=3, job_ttl_ms=60_000)
        await claimer.claim()
        while await claimer.claim():
            pass
    finally:
        await worker_redis.aclose()
        await relay.close()
    assert relay.dropped == 1

    queued: list[str] = []
    for job_id in await real_redis.zrange(queue_name, 0, -1):
        payload = await real_redis.get(job_key_prefix + job_id.decode())
        queued += decode_job(payload)["a"][0]
    queued += [r.decode() for r in await real_redis.lrange(inbox_key(queue_name), 0, -1)]
    assert sorted(queued) == sorted(records)
