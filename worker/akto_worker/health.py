"""The worker's HTTP side port: Prometheus metrics and the liveness/readiness probes."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError


async def serve(redis: Redis, port: int) -> web.AppRunner:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` from the worker's own event loop,
    so a blocked loop fails the probes as it should."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(redis.ping(), timeout=2)
        except (RedisError, TimeoutError) as exc:
            return web.Response(status=503, text=f"redis: {exc}\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", healthz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
