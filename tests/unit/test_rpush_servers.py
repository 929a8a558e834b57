"""The hook's own RPUSH against throwaway Redis servers: a password and a database number, TLS, and a
restart between two pushes. The kept connection comes from redis-py's pool, so its handshake (AUTH,
SELECT, TLS) must hold on the first connection and on the one that replaces a dropped one."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from akto_hook.recording.rpush import Pusher
from akto_ingest.connections import redis_client
from akto_ingest.queue import inbox_key
from tests.stack import Proc, free_port, spawn

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

PASSWORD = "s3cret"


@dataclass
class Server:
    port: int
    args: list[str]
    folder: Path
    proc: Proc | None = None

    def start(self) -> None:
        self.proc = spawn(
            f"redis-{self.port}-{time.monotonic_ns()}",
            ["redis-server", "--bind", "127.0.0.1", "--dir", str(self.folder), *self.args],
            {},
            self.folder,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or not self.proc.alive():
                    raise RuntimeError(f"redis-server did not start: {self.proc.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL, timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[Server], tmp_path: Path, *args: str) -> Server:
    port = free_port()
    server = Server(port, [*args], tmp_path)
    server.args = [arg.replace("{port}", str(port)) for arg in server.args]
    server.start()
    servers.append(server)
    return server


async def pushed(url: str, lines: list[list[str]], between: Server | None = None) -> None:
    """Push each group with one Pusher; restart ``between`` after the first group."""
    client = redis_client(url, socket_connect_timeout=1, socket_timeout=None)
    pusher = Pusher(client, "q")
    try:
        for n, group in enumerate(lines):
            if n == 1 and between is not None:
                between.stop()
                between.start()
            await pusher(group)
    finally:
        await client.aclose()


async def inbox(url: str) -> list[bytes]:
    admin = Redis.from_url(url, socket_timeout=5)
    try:
        return await admin.lrange(inbox_key("q"), 0, -1)
    finally:
        await admin.aclose()


async def test_password_and_database_hold_across_a_redis_restart(servers: list[Server], tmp_path: Path) -> None:
    server = start(
        servers,
        tmp_path,
        "--port",
        "{port}",
        "--requirepass",
        PASSWORD,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    )
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/3"
    await pushed(url, [["one", "two"], ["three"]], between=server)
    assert await inbox(url) == [b"one", b"two", b"three"]
    assert await inbox(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0") == []


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "redis.crt", folder / "redis.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_tls_holds_across_a_redis_restart(servers: list[Server], tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server = start(
        servers,
        tmp_path,
        *("--port", "0", "--tls-port", "{port}", "--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
        *("--appendonly", "yes", "--appendfsync", "always"),
    )
    url = f"rediss://127.0.0.1:{server.port}/2?ssl_ca_certs={cert}&ssl_check_hostname=false"
    await pushed(url, [["one"], ["two", "three"]], between=server)
    assert await inbox(url) == [b"one", b"two", b"three"]
