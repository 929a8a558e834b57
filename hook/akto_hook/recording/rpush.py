"""The hook's RPUSH on a connection it keeps, packed here rather than by redis-py's command path.

redis-py checks a connection out of its pool for every command (a lock and a readability probe),
wraps the call in its retry policy, packs the command in Python and runs response callbacks: about
twice the CPU of the write itself, on the proxy's event loop, once per request. The writer sends
one group at a time, so one connection carries them. It comes from the client's own pool, so TLS,
auth, the database and Sentinel's primary discovery stay redis-py's, and closing the client closes it.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from akto_ingest.queue import inbox_key, push


def packed_rpush(key: bytes, lines: list[str]) -> bytes:
    """``RPUSH key line...`` in Redis's wire protocol (RESP)."""
    parts = [b"*%d\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (len(lines) + 2, len(key), key)]
    for line in lines:
        data = line.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Pusher:
    """``await pusher(lines)``: one RPUSH of ``lines`` onto the queue's inbox, or an exception."""

    def __init__(self, redis: Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue
        self._key = inbox_key(queue).encode()
        self._conn: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False

    async def __call__(self, lines: list[str]) -> None:
        loop = asyncio.get_running_loop()
        if self._busy or self._loop is not loop:
            if self._busy:
                # A replay while the writer's push is in flight: the kept connection carries one
                # command at a time, so this one takes redis-py's own path.
                await push(self._redis, self._queue, lines)
                return
            # A new event loop (an SDK script's second asyncio.run): the old loop's connection is
            # unusable here; the pool closes it with the client.
            self._conn, self._loop = None, loop
        self._busy = True
        try:
            await self._send(packed_rpush(self._key, lines))
        finally:
            self._busy = False

    async def _send(self, packed: bytes) -> None:
        fresh = self._conn is None
        if self._conn is None:
            self._conn = await self._redis.connection_pool.get_connection()
        conn = self._conn
        try:
            try:
                await conn.send_packed_command(packed, check_health=False)
                await conn.read_response()
            except (RedisConnectionError, OSError):
                if fresh:
                    raise
                # The kept connection went stale while idle (Redis restarted, or closed it): redis-py
                # probes for that at every checkout, we find out here; one more try on a new connection.
                # redis-py has already disconnected it; sending reconnects.
                await conn.send_packed_command(packed, check_health=False)
                await conn.read_response()
        except ResponseError:
            # An error reply leaves the connection in step, but it may lead to a server that no longer
            # takes writes: a primary demoted behind the same address (DNS, a load balancer) answers
            # READONLY on every connection made before the failover. The next push connects anew.
            # (A cancellation or a lost connection is disconnected by redis-py itself.)
            await conn.disconnect(nowait=True)
            raise
