"""A durable local spool for records the hook could not hand to Redis.

Records are JSON lines in segment files under one folder. Each append is one ``write`` to the
kernel (write-through): a killed process loses nothing it had appended, and only a machine crash
can lose what is not yet fsync'd (at most ``SYNC_INTERVAL_SECONDS``). Opening, fsync, rotation,
reading and deleting run in threads, never on the event loop.

Each process owns its segments: their names carry an owner token whose lock file
(``owner-<token>.lock``) the process holds with ``flock`` for its whole life. A process replays
only its own segments, plus those of owners whose lock can be taken (a process that died or
closed). Replay keeps its position in a ``<segment>.offset`` file, so a segment replayed halfway is
resumed, not pushed again from its start. Every disk error counts as a drop and never raises.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import metrics

log = logging.getLogger("akto_hook")

SEGMENT_BYTES = 16 * 1024 * 1024
SYNC_INTERVAL_SECONDS = 0.05
REPLAY_CHUNK = 500
REPLAY_CHUNK_BYTES = 4 * 1024 * 1024
# Records wait in memory only while a segment is being opened; past this they are dropped.
BACKLOG_MAX_BYTES = 8 * 1024 * 1024

Push = Callable[[list[str]], Awaitable[None]]
T = TypeVar("T")


def default_dir(queue: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", queue)
    return Path(os.environ.get("TMPDIR", "/tmp")) / "akto-ingest-spool" / safe


class UnreadableSegment(Exception):
    """The disk refused to read a segment back; it is set aside for an operator."""


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0
    records: int = 0


class Spool:
    """Append-only, size-bounded segment files in ``folder``, owned by this process."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.dropped = 0
        self._owner_fd: int | None = None
        self._active: _Segment | None = None
        self._sealed: collections.deque[tuple[Path, int]] = collections.deque()
        self._sealed_bytes = 0
        self._foreign_bytes = 0
        self._backlog: list[tuple[bytes, str]] = []
        self._backlog_bytes = 0
        self._retired: list[_Segment] = []  # failed segments whose fd the maintainer closes
        self._dirty = False
        self._refusing: str | None = None  # set when the disk refused waiting records; until sealed
        self._seq = 0
        self._wake = asyncio.Event()
        self._io = asyncio.Lock()

    # -- appending (event loop, never blocks on the disk, never raises) --------------------------

    def append(self, line: str, call_id: str) -> bool:
        """Add one record; False when it was dropped (counted, logged CRITICAL with its call id)."""
        problem = self.offer(line, call_id)
        if problem is not None:
            self.drop(call_id, problem)
        return problem is None

    def offer(self, line: str, call_id: str) -> str | None:
        """Add one record if the spool can take it; else say why (nothing counted: the caller decides)."""
        if self._refusing is not None:
            return self._refusing
        data = line.encode(errors="replace") + b"\n"
        if self.size_estimate() + len(data) > self.max_bytes:
            return f"spool full ({self.max_bytes} bytes)"
        if self._active is None or self._backlog:
            if self._backlog_bytes + len(data) > BACKLOG_MAX_BYTES:
                return "spool not writable (no segment could be opened)"
            self._backlog.append((data, call_id))
            self._backlog_bytes += len(data)
            self._wake.set()
            return None
        return self._write(self._active, data)

    def append_blocking(self, line: str, call_id: str) -> bool:
        """Like :meth:`append`, opening a segment on the spot: for use after the loop is gone."""
        self.flush_blocking()
        return self.append(line, call_id)

    def flush_blocking(self) -> None:
        """Write records still waiting for a segment, opening one on the spot (no loop needed)."""
        if self._active is None and self._backlog:
            try:
                self._active = self._open_segment()
            except OSError as exc:
                self._refusing = f"cannot open a spool segment: {exc}"
        self._write_backlog()

    def _write(self, segment: _Segment, data: bytes) -> str | None:
        try:
            written = os.write(segment.fd, data)
            if written != len(data):
                # A short write leaves half a record: cut it off so the segment stays whole lines.
                os.ftruncate(segment.fd, segment.size)
                raise OSError(errno.ENOSPC, "short write (disk full?)")
        except OSError as exc:
            self._retire(segment)
            return f"cannot write the spool: {exc}"
        segment.size += written
        segment.records += 1
        self._dirty = True
        metrics.SPOOLED.inc()
        if segment.size >= SEGMENT_BYTES:
            self._wake.set()
        return None

    def _retire(self, segment: _Segment) -> None:
        """Stop writing to a segment the disk refused; what it holds is still replayed."""
        if self._active is segment:
            self._active = None
        self._retired.append(segment)
        self._wake.set()

    def drop(self, call_id: str, problem: str) -> None:
        """Count and log (CRITICAL, with the call id) one record that is lost."""
        self.dropped += 1
        metrics.SPOOL_DROPPED.inc()
        log.critical(
            "akto %s at %s: record call_id=%s DROPPED; %d dropped so far",
            problem,
            self.folder,
            call_id,
            self.dropped,
            extra={"call_id": call_id},
        )

    def size_estimate(self) -> int:
        active = self._active.size if self._active else 0
        return self._sealed_bytes + self._foreign_bytes + active + self._backlog_bytes

    @property
    def active_bytes(self) -> int:
        return self._active.size if self._active else 0

    async def check_folder(self) -> None:
        """Say at start, loudly, when the spool folder cannot be created (records would be dropped)."""
        try:
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            log.critical(
                "akto spool folder %s is unusable (%s): records would be DROPPED while Redis is down", self.folder, exc
            )

    async def rotate(self) -> bool:
        """Seal the active segment and go on in a new one (so a replay can catch up with it);
        False when no new segment could be opened."""
        async with self._io:
            before = self._active
            await self._rotate()
            return self._active is not before

    def pending(self) -> bool:
        """Whether this process has records on disk (or on their way there) not yet replayed."""
        return self._active is not None or bool(self._sealed) or bool(self._backlog) or bool(self._retired)

    # -- background upkeep (threads for the disk) -----------------------------------------------

    async def maintain_forever(self) -> None:
        """Open segments for waiting records, rotate full ones, fsync: every ``SYNC_INTERVAL_SECONDS``."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_INTERVAL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            async with self._io:
                await self._maintain()

    async def _maintain(self) -> None:
        await self._settle_retired()
        if self._backlog and self._active is None:
            await self._open_for_backlog()
        if self._active is not None and self._active.size >= SEGMENT_BYTES:
            await self._rotate()
        if self._dirty and self._active is not None:
            self._dirty = False
            segment = self._active
            try:
                links = await asyncio.to_thread(_sync, segment.fd)
            except OSError as exc:
                log.critical("akto cannot fsync the spool at %s: %s; starting a new segment", self.folder, exc)
                self._retire(segment)
                await self._settle_retired()
                raise
            if links == 0 and self._active is segment:
                self._lost_from_outside(segment)

    def _lost_from_outside(self, segment: _Segment) -> None:
        """The segment was deleted under us (a /tmp cleaner): what it held is gone, count it."""
        self._active = None
        self._retired.append(_Segment(segment.path, segment.fd))
        self.dropped += segment.records
        metrics.SPOOL_DROPPED.inc(segment.records)
        log.critical(
            "akto spool segment %s was removed from outside: %d record(s) in it DROPPED; %d dropped so far",
            segment.path,
            segment.records,
            self.dropped,
        )
        self._wake.set()

    async def _open_for_backlog(self) -> None:
        try:
            self._active = await _to_thread_to_the_end(self._open_segment)
        except OSError as exc:
            backlog, self._backlog, self._backlog_bytes = self._backlog, [], 0
            self._refusing = f"cannot open a spool segment: {exc}"
            for _, call_id in backlog:
                self.drop(call_id, self._refusing)
            return
        self._write_backlog()

    def _write_backlog(self) -> None:
        backlog, self._backlog, self._backlog_bytes = self._backlog, [], 0
        for data, call_id in backlog:
            if self._active is None:
                self.drop(call_id, "cannot write the spool (segment refused an earlier record)")
            elif (problem := self._write(self._active, data)) is not None:
                self._refusing = problem
                self.drop(call_id, problem)

    async def _rotate(self) -> None:
        old = self._active
        if old is None:
            return
        try:
            new = await _to_thread_to_the_end(self._open_segment)
        except OSError as exc:
            log.error("akto cannot open a new spool segment at %s: %s; the current one grows", self.folder, exc)
            return
        if self._active is old:
            self._active = new
            await self._close_segment(old)
        elif self._active is None:  # the old one failed meanwhile (and is retired): go on in the new one
            self._active = new
        else:
            await self._close_segment(new)

    async def _settle_retired(self) -> None:
        while self._retired:
            await self._close_segment(self._retired.pop(0))

    async def _close_segment(self, segment: _Segment) -> None:
        """fsync and close a segment no longer written; keep it for replay unless it is empty."""
        await _to_thread_to_the_end(_close_quietly, segment)
        if segment.size:
            self._sealed.append((segment.path, segment.size))
            self._sealed_bytes += segment.size
        else:
            await asyncio.to_thread(_remove, segment.path)

    def _open_segment(self) -> _Segment:
        """A new segment file (thread). Recreates the folder: something outside may remove it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hold_owner_lock()
        self._seq += 1
        path = self.folder / f"{time.time_ns():020d}-{self.owner}-{self._seq:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return _Segment(path, fd)

    def _hold_owner_lock(self) -> None:
        lock = self.folder / f"owner-{self.owner}.lock"
        if self._owner_fd is not None and lock.exists():
            return
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # the folder was removed with our lock file: take a new one
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owner_fd = fd

    async def seal(self) -> None:
        """Write any waiting records, then close the active segment so it can be replayed."""
        async with self._io:
            await self._settle_retired()
            if self._backlog:
                await self._open_for_backlog()
            segment, self._active = self._active, None
            self._dirty = False
            self._refusing = None
            if segment is not None:
                await self._close_segment(segment)

    # -- replay ---------------------------------------------------------------------------------

    async def replay_own(self, push: Push, chunk_timeout: float) -> int:
        """Push this process's sealed segments, oldest first; each is deleted once all of it is in.

        A push failure or timeout propagates, and the replay resumes there next time.
        """
        moved = 0
        while self._sealed:
            path, size = self._sealed[0]
            moved += await self._replay_or_set_aside(path, size, push, chunk_timeout)
            self._sealed.popleft()
            self._sealed_bytes -= size
        return moved

    async def _replay_or_set_aside(self, path: Path, size: int, push: Push, chunk_timeout: float) -> int:
        try:
            return await _replay_segment(path, size, push, chunk_timeout)
        except UnreadableSegment as exc:
            aside = path.with_name(path.name + ".unreadable")
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.rename, aside)
            log.critical("akto cannot read spool segment %s back (%s); left as %s for an operator", path, exc, aside)
            return 0

    async def replay_dead(self, push: Push, chunk_timeout: float) -> int:
        """Push the segments of owners that are gone (a process that died or closed), oldest first."""
        candidates, foreign_bytes = await asyncio.to_thread(self._scan_foreign)
        self._foreign_bytes = foreign_bytes
        moved = 0
        for path in candidates:
            handle = await _to_thread_to_the_end(_claim, path)
            if handle is None:
                continue
            try:
                size = os.fstat(handle).st_size
                moved += await self._replay_or_set_aside(path, size, push, chunk_timeout)
                self._foreign_bytes = max(0, self._foreign_bytes - size)
            finally:
                os.close(handle)
        if candidates:
            await asyncio.to_thread(self._forget_dead_owners)
        return moved

    def _scan_foreign(self) -> tuple[list[Path], int]:
        """Segments of owners whose lock is free (thread), and the bytes of every foreign segment."""
        dead: list[Path] = []
        total = 0
        alive: dict[str, bool] = {}
        for path in sorted(self.folder.glob("*.jsonl")):
            owner = _owner_of(path)
            if owner == self.owner:
                continue
            with contextlib.suppress(OSError):
                total += path.stat().st_size
            if owner not in alive:
                alive[owner] = _owner_alive(self.folder, owner)
            if not alive[owner]:
                dead.append(path)
        return dead, total

    def _forget_dead_owners(self) -> None:
        """Remove the lock files of owners that are gone and left no segment behind (thread)."""
        owners = {_owner_of(p) for p in self.folder.glob("*.jsonl")}
        for lock in self.folder.glob("owner-*.lock"):
            owner = lock.name[len("owner-") : -len(".lock")]
            if owner == self.owner or owner in owners:
                continue
            fd = _try_lock(lock)
            if fd is not None:
                with contextlib.suppress(OSError):
                    lock.unlink()
                os.close(fd)

    async def close(self) -> None:
        """Seal and release: what is left is replayed by the next process that shares the folder."""
        await self.seal()
        if self._owner_fd is not None:
            fd, self._owner_fd = self._owner_fd, None
            if not self._sealed:
                await asyncio.to_thread(_remove, self.folder / f"owner-{self.owner}.lock")
            os.close(fd)


async def _to_thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread`` for work that creates or closes a file: a cancellation waits for the
    thread and is delivered at the caller's next ``await``, once the caller holds the result (so no
    opened segment or lock is ever orphaned)."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        task = asyncio.current_task()
        if task is not None:
            task.cancel()
    return future.result()


def _owner_of(path: Path) -> str:
    parts = path.stem.split("-")
    return parts[1] if len(parts) >= 3 else ""


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _owner_alive(folder: Path, owner: str) -> bool:
    """An owner is alive while it holds its lock file. Segments of an older release have none:
    those count as gone, and the per-segment lock still keeps a live writer's segment out."""
    fd = _try_lock(folder / f"owner-{owner}.lock")
    if fd is None:
        return (folder / f"owner-{owner}.lock").exists()
    os.close(fd)
    return False


def _claim(path: Path) -> int | None:
    """Lock a segment for replay (thread); None when it is gone, or another process holds it (a live
    process is still appending to it, or replaying it)."""
    fd = _try_lock(path)
    if fd is None:
        return None
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)  # replayed and deleted by another process while we waited
        return None
    return fd


async def _replay_segment(path: Path, size: int, push: Push, chunk_timeout: float) -> int:
    """Push one segment from its saved offset in chunks, saving the offset after each; delete it."""
    offset = await asyncio.to_thread(_read_offset, path)
    moved = 0
    while offset < size:
        try:
            lines, end = await asyncio.to_thread(_read_chunk, path, offset, size)
        except OSError as exc:
            raise UnreadableSegment(str(exc)) from exc
        if not lines and end == offset:
            break  # the file is shorter than recorded: nothing more to read
        if lines:
            async with asyncio.timeout(chunk_timeout):
                await push(lines)
            moved += len(lines)
        offset = end
        await asyncio.to_thread(_save_offset, path, offset)
    await asyncio.to_thread(_remove, path)
    return moved


def _offset_path(path: Path) -> Path:
    return path.with_name(path.name + ".offset")


def _read_offset(path: Path) -> int:
    try:
        return int(_offset_path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _save_offset(path: Path, offset: int) -> None:
    # Best effort: without it a later replay starts earlier and duplicates, it loses nothing.
    with contextlib.suppress(OSError):
        _offset_path(path).write_text(str(offset))


def _read_chunk(path: Path, offset: int, end: int) -> tuple[list[str], int]:
    """Up to ``REPLAY_CHUNK`` whole lines from ``offset`` (thread); a torn last line is kept as is."""
    lines: list[str] = []
    read = 0
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- closed below; FileNotFoundError means replayed
    except FileNotFoundError:
        return [], offset
    with handle:
        handle.seek(offset)
        position = offset
        while position < end and len(lines) < REPLAY_CHUNK and read < REPLAY_CHUNK_BYTES:
            raw = handle.readline(end - position)
            if not raw:
                break
            position += len(raw)
            read += len(raw)
            if raw.strip():
                lines.append(raw.rstrip(b"\n").decode(errors="replace"))
    return lines, position


def _remove(path: Path) -> None:
    for target in (path, _offset_path(path)):
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # replayed already: a failed delete can only cause a duplicate
            log.error("akto cannot delete replayed spool file %s: %s", target, exc)


def _sync(fd: int) -> int:
    """fsync a segment; its link count (0 once something outside deleted it)."""
    os.fsync(fd)
    return os.fstat(fd).st_nlink


def _close_quietly(segment: _Segment) -> None:
    with contextlib.suppress(OSError):
        os.fsync(segment.fd)
    with contextlib.suppress(OSError):
        os.close(segment.fd)
