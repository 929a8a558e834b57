"""Every Redis client the hook, the worker and ``akto-ingest`` open, built from one ``redis_url``.

Two forms are accepted (``REDIS_URL`` / ``redis_url``):

- ``redis://``, ``rediss://`` or ``unix://``: one Redis server, as redis-py reads it;
- ``redis+sentinel://[[username]:password@]host1:26379,host2:26379/<master_name>[/db]``: Redis
  Sentinel. Clients ask the Sentinels which server is the primary and ask again after a failover.
  The password is the primary's (and its replicas'); the Sentinels themselves are reached without
  one. A host without a port uses 26379.

Every client bounds each command (:func:`bounded`): a server that stops answering without closing
its sockets (a SIGSTOPped or partitioned primary) costs a command ``redis_timeout`` seconds, after
which the client reconnects, through Sentinel to the primary the Sentinels name at that moment.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlparse

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Deserializer, Serializer
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
DIRECT_SCHEMES = ("redis", "rediss", "unix")
# The default for ``redis_timeout`` (AKTO_REDIS_TIMEOUT).
REDIS_TIMEOUT_SECONDS = 5.0
# A Sentinel answers from memory, so it gets at most this long: a frozen Sentinel must not use up the
# caller's own deadline (the hook's probe allows 1 s) before the next Sentinel is asked.
SENTINEL_TIMEOUT_SECONDS = 0.5
KEEPALIVE_PROBES = 3


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL, parsed."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Read a ``redis+sentinel://`` URL; raises ``ValueError`` naming what is wrong with it."""
    rest = url.removeprefix(f"{SENTINEL_SCHEME}://")
    hosts_part, _, path = rest.partition("/")
    userinfo, _, hosts_part = hosts_part.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts_part.split(","):
        name, port = _host_port(host.strip())
        sentinels.append((name, port))
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ValueError("names no Sentinel master: redis+sentinel://host:26379/<master_name>[/db]")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("path must be /<master_name> or /<master_name>/<db number>")
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _host_port(host: str) -> tuple[str, int]:
    if not host:
        raise ValueError("names no Sentinel host: redis+sentinel://host1:26379,host2:26379/<master_name>")
    if host.startswith("["):  # [IPv6]:port
        name, _, port_text = host[1:].partition("]")
        port_text = port_text.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port_text = host.partition(":")
    else:
        name, port_text = host, ""
    if not name:
        raise ValueError(f"Sentinel address {host!r} names no host")
    if not port_text:
        return name, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Sentinel address {host!r} has an invalid port")
    return name, int(port_text)


def check_redis_url(url: str) -> str:
    """Validate either form of ``redis_url``; raises ``ValueError`` naming the problem."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
        return url
    if scheme not in DIRECT_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, unix:// or redis+sentinel://host:26379[,host2:26379]/<master_name> URL"
        )
    parsed = urlparse(url)
    try:
        parsed.port  # noqa: B018 -- urlparse checks the port only when it is read
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc})") from None
    if scheme != "unix" and not parsed.hostname:
        raise ValueError("names no host")
    return url


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def bounded(timeout: float, connect_timeout: float | None = None) -> dict[str, Any]:
    """Connection settings under which no Redis command waits longer than ``timeout`` for its reply.

    The socket timeout bounds a command on a server that stops answering but keeps its sockets open
    (the kernel still accepts and acknowledges). TCP keepalive finds a peer gone behind a partition on
    idle pooled connections, which would otherwise be handed out and only time out on their next use.
    """
    interval = max(1, math.ceil(timeout))
    options = {
        option: value
        for name, value in (("TCP_KEEPIDLE", interval), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", KEEPALIVE_PROBES))
        if (option := getattr(socket, name, None)) is not None
    }
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout if connect_timeout is None else connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": options,
    }


def redis_client(url: str, **kwargs: Any) -> Redis:
    """An asyncio client for the URL; with Sentinel, one that always talks to the current primary.

    ``kwargs`` go to every connection (timeouts, retry policy). No connection is opened here.
    """
    return _client(url, Redis, kwargs)


def _client(url: str, redis_class: type[Redis], kwargs: dict[str, Any]) -> Redis:
    if not is_sentinel(url):
        direct: Redis = redis_class.from_url(url, **kwargs)
        return direct
    target = parse_sentinel_url(url)
    # Sentinels get the socket settings but never the data password (Sentinel's own default).
    sentinel_kwargs = {key: value for key, value in kwargs.items() if key.startswith("socket_")}
    for key in ("socket_timeout", "socket_connect_timeout"):
        if sentinel_kwargs.get(key) is not None:
            sentinel_kwargs[key] = min(sentinel_kwargs[key], SENTINEL_TIMEOUT_SECONDS)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(
        target.master, redis_class=redis_class, db=target.db, username=target.username, password=target.password
    )
    return client


def outage_retry(url: str) -> dict[str, Any]:
    """Connection settings that ride out a Redis restart or a Sentinel failover (about 5 minutes).

    For one server, OSError is retried too: reconnecting, redis-py retries the raw
    ConnectionRefusedError, which its default retry does not cover. Through Sentinel it must not
    be: that inner retry keeps dialling the address it was given, the dead primary. Without it the
    refusal surfaces as a ConnectionError to the Sentinel-managed connection, whose retry asks the
    Sentinels again and so lands on the new primary once one is elected.
    """
    errors: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
    if not is_sentinel(url):
        errors += (OSError,)
    return {
        "retry_on_timeout": True,
        "retry_on_error": list(errors),
        "retry": Retry(ExponentialBackoff(cap=5, base=0.1), retries=60, supported_errors=errors),  # type: ignore[arg-type]
    }


def worker_pool(
    url: str, queue: str, timeout: float, *, job_serializer: Serializer, job_deserializer: Deserializer
) -> ArqRedis:
    """The worker's arq connection (arq's poll, the collector and the jobs), built here rather than by
    arq from ``RedisSettings``.

    arq 0.28 drops the retry settings of a Sentinel ``RedisSettings``, so a worker connected through
    Sentinel would die at the first failover; and ``RedisSettings`` has no socket timeout, so a frozen
    primary would hold arq's poll forever. This pool has the same retry policy either way, and each
    command gives up after ``timeout``: the retry then reconnects, asking the Sentinels again.
    """
    kwargs = {**bounded(timeout, connect_timeout=min(timeout, 1)), **outage_retry(url)}
    pool = cast(ArqRedis, _client(url, ArqRedis, kwargs))
    pool.default_queue_name = queue
    pool.job_serializer = job_serializer
    pool.job_deserializer = job_deserializer
    return pool


def arq_redis_settings(url: str) -> RedisSettings:
    """arq's ``RedisSettings`` for the URL (used by ``arq --check``; the worker runs on :func:`worker_pool`)."""
    if not is_sentinel(url):
        settings = RedisSettings.from_dsn(url)
    else:
        target = parse_sentinel_url(url)
        settings = RedisSettings(
            host=target.sentinels,
            sentinel=True,
            sentinel_master=target.master,
            database=target.db,
            username=target.username,
            password=target.password,
        )
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    for name, value in outage_retry(url).items():
        setattr(settings, name, value)
    return settings
