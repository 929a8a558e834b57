"""A TCP server speaking just enough of Redis's protocol (RESP) to script what an ``RPUSH`` gets back.

Real Redis cannot be told to answer late, answer one connection differently from the next, or stop
reading a socket; this server can, so the hook's raw-protocol writer meets those faults for real.
Connection setup commands (``CLIENT SETINFO``, ``SELECT``, ``AUTH``, ``PING``) are answered ``+OK``
(``+PONG``); every ``RPUSH`` is answered by ``answer(connection number, push number, values)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

# (seconds to wait before answering, the raw reply); the wait runs on that connection only.
Reply = tuple[float, bytes]
Answer = Callable[[int, int, list[bytes]], Reply]


@dataclass
class Push:
    """One ``RPUSH`` the server read: on which connection (0, 1, ...) and its values."""

    connection: int
    values: list[bytes]


@dataclass
class FakeResp:
    answer: Answer
    # Seconds the server stops reading after answering a push (so the client's next write backs up),
    # by push number.
    stall_after: dict[int, float] = field(default_factory=dict)
    pushes: list[Push] = field(default_factory=list)
    accepted: list[Push] = field(default_factory=list)  # pushes answered with an integer (written)
    connections: int = 0
    answered: int = 0  # pushes whose reply was written
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = self.connections
        self.connections += 1
        try:
            while True:
                command = await _read_command(reader)
                if command is None:
                    return
                name = command[0].upper()
                if name == b"RPUSH":
                    push = Push(number, command[2:])
                    self.pushes.append(push)
                    index = len(self.pushes) - 1
                    delay, reply = self.answer(number, index, push.values)
                    if delay:
                        await asyncio.sleep(delay)
                    if reply.startswith(b":"):
                        self.accepted.append(push)
                    writer.write(reply)
                    await writer.drain()
                    self.answered += 1
                    await asyncio.sleep(self.stall_after.get(index, 0))
                else:
                    writer.write(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    header = await reader.readline()
    if not header:
        return None
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts
