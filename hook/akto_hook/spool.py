"""A durable local spool for records the hook could not hand to Redis.

Records are appended as JSON lines to segment files under one folder, flushed and fsync'd in batches
off the request path. Each process appends to its own segment, holding an exclusive ``flock`` on it;
any segment whose lock can be taken is sealed (or left by a process that died) and is replayed to
Redis oldest first, then deleted. So a restarted proxy, or a sibling worker process, replays what an
earlier one spooled.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

log = logging.getLogger("akto_hook")

SEGMENT_BYTES = 16 * 1024 * 1024
FLUSH_INTERVAL_SECONDS = 0.05
REPLAY_CHUNK = 500


def default_dir(queue: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", queue)
    return Path(os.environ.get("TMPDIR", "/tmp")) / "akto-ingest-spool" / safe


class Spool:
    """Append-only, size-bounded segment files in ``folder``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._active: IO[bytes] | None = None
        self._active_path: Path | None = None
        self._dirty = False
        self._seq = 0
        self._sealed_bytes = self.size()
        self.dropped = 0
        self.last_problem = ""

    def size(self) -> int:
        return sum(p.stat().st_size for p in self._segments())

    def _segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def _open_segment(self) -> IO[bytes]:
        self._seq += 1
        # Recreated on every segment: something outside may have removed it (a /tmp cleaner).
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self._active_path = self.folder / name
        handle = open(self._active_path, "ab")  # noqa: SIM115 -- kept open across appends on purpose
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._active = handle
        return handle

    def append(self, line: str) -> bool:
        """Add one record; False (counted, reason in ``last_problem``) when the spool is full or
        the disk refuses it. Never raises and never blocks on the disk."""
        data = line.encode() + b"\n"
        try:
            handle = self._active or self._open_segment()
            if self.size_estimate() + len(data) > self.max_bytes:
                self.dropped += 1
                self.last_problem = f"spool full ({self.max_bytes} bytes)"
                return False
            handle.write(data)
        except OSError as exc:
            self.dropped += 1
            self.last_problem = f"cannot write the spool: {exc}"
            self._active = None
            return False
        self._dirty = True
        if handle.tell() >= SEGMENT_BYTES:
            self.seal()
        return True

    def size_estimate(self) -> int:
        # stat() of every segment per record would be slow under a flood; sealed segments only
        # change when replayed, so their total is cached.
        active = self._active.tell() if self._active else 0
        return self._sealed_bytes + active

    def seal(self) -> None:
        """Close the active segment so it can be replayed."""
        if self._active is None:
            return
        self._active.flush()
        os.fsync(self._active.fileno())
        self._sealed_bytes = self.size_estimate()
        self._active.close()
        self._active = None
        self._dirty = False

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
            if self._dirty and self._active is not None:
                self._dirty = False
                self._active.flush()
                await asyncio.to_thread(os.fsync, self._active.fileno())

    def pending(self) -> bool:
        return self._active is not None or bool(self._segments())

    async def replay(self, push_many: Callable[[list[str]], Awaitable[None]]) -> int:
        """Push every replayable segment, oldest first; a segment is deleted only once all of it is in."""
        self.seal()
        moved = 0
        for path in self._segments():
            claimed = await asyncio.to_thread(_claim, path)
            if claimed is None:
                continue
            handle, lines = claimed
            with handle:
                for start in range(0, len(lines), REPLAY_CHUNK):
                    await push_many(lines[start : start + REPLAY_CHUNK])
                path.unlink()
            moved += len(lines)
        self._sealed_bytes = self.size()
        return moved


def _claim(path: Path) -> tuple[IO[bytes], list[str]] | None:
    """Open and lock a segment for replay; None when it is gone or another process holds it."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- closed by the caller after the replay
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()  # another live process is still appending to it, or replaying it
        return None
    if os.fstat(handle.fileno()).st_nlink == 0:
        handle.close()  # replayed and deleted by another process while we waited
        return None
    lines = [ln.decode(errors="replace") for ln in handle.read().splitlines() if ln.strip()]
    return handle, lines
