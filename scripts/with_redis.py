"""Run a command with a Redis answering at $REDIS_URL, starting a throwaway redis-server if none does.

    python scripts/with_redis.py COMMAND [ARGS...]

The Redis it starts keeps its data in a temporary folder and is stopped when the command ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, folder: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("no Redis answers at $REDIS_URL and redis-server is not installed (apt-get install redis-server)")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if answers("127.0.0.1", port):
            return proc
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"redis-server did not start on port {port}")


def main() -> int:
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    parsed = urlparse(url)
    env = dict(os.environ)
    proc = None
    with tempfile.TemporaryDirectory(prefix="akto-redis-") as folder:
        if not answers(parsed.hostname or "127.0.0.1", parsed.port or 6379):
            port = free_port()
            proc = start_redis(port, folder)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            print(f"started redis-server on port {port} for this run", file=sys.stderr)
        try:
            return subprocess.call(sys.argv[1:], env=env)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
