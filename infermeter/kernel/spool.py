"""An append-only, bounded, on-disk spool of JSON payloads, replayed in order.

Layout of the spool directory::

    00000000000001.seg   segments: frames of  [u32 length][u32 crc32][payload]
    00000000000002.seg   (a new segment when the active one passes ``segment_bytes``)
    ack                  "<segment> <offset>": everything before it was delivered

:meth:`Spool.append` writes one batch and ``fsync``\\ s it before returning, so a payload that
``append`` returned for survives ``kill -9``. :meth:`Spool.peek` reads from the ack position
without consuming; :meth:`Spool.ack` moves the position (written atomically, ``fsync``\\ ed)
and deletes delivered segments. A torn frame at the end of the last segment (a crash inside
``append``, never acknowledged) is truncated on open. The spool refuses a batch that would
take it past ``max_bytes`` (:class:`~infermeter.kernel.errors.SpoolError`); callers count that.
A write the disk refuses (ENOSPC, EIO, a read-only remount) is undone (the segment is
truncated back, the ack file left as it was) and raised as
:class:`~infermeter.kernel.errors.SpoolWriteError`: the caller keeps the batch and retries.
The directory is locked (``flock`` on ``lock``) by its owner: a second process on it refuses
to start (:class:`~infermeter.kernel.errors.SpoolLocked`, naming the ``owner`` kind).
Thread-safe: callers use it from worker threads so disk waits stay off the loop.

Used by the collector (usage records, GPU samples) and the gateway (its own usage records);
:mod:`infermeter.kernel.spool_writer` holds what the disk refuses and
:mod:`infermeter.kernel.spool_shipper` drains a spool to metering.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from infermeter.kernel.errors import SpoolError, SpoolLocked, SpoolWriteError

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">II")
_SUFFIX = ".seg"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset inside it."""

    segment: int
    offset: int


def _segment_name(seq: int) -> str:
    return f"{seq:014d}{_SUFFIX}"


def _scan(data: bytes, start: int, limit: int | None = None) -> tuple[list[bytes], int]:
    """Decode whole, valid frames from ``start``; returns them and the end offset."""
    out: list[bytes] = []
    pos = start
    size = len(data)
    while pos + _HEADER.size <= size and (limit is None or len(out) < limit):
        length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > size:
            break
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = end
    return out, pos


class Spool:
    """Durable FIFO of byte payloads in ``directory``."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 8 * 1024 * 1024,
        warn_fraction: float = 0.8,
        on_near_full: Callable[[int, int], None] | None = None,
        owner: str = "process",
    ) -> None:
        self.dir = Path(directory)
        self.owner = owner
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.warn_fraction = warn_fraction
        self._on_near_full = on_near_full
        self._lock = threading.Lock()
        self._near_full = False
        self._sizes: dict[int, int] = {}
        self.ack_pos = self._read_ack()
        segments = sorted(int(p.stem) for p in self.dir.glob(f"*{_SUFFIX}"))
        for seq in segments:
            if seq < self.ack_pos.segment:
                (self.dir / _segment_name(seq)).unlink()  # delivered before a crash
                continue
            self._sizes[seq] = (self.dir / _segment_name(seq)).stat().st_size
        if not self._sizes:
            self._sizes[max(self.ack_pos.segment, 1)] = 0
            if self.ack_pos.segment < 1:
                self.ack_pos = Position(1, 0)
        self._active = max(self._sizes)
        (self.dir / _segment_name(self._active)).touch()
        self._repair_tail()
        self.pending = self._count_pending()
        self._fh = open(self.dir / _segment_name(self._active), "ab")  # noqa: SIM115

    # -- state on open -----------------------------------------------------------------------

    def _take_lock(self) -> IO[str]:
        # a file object, so that a spool dropped without close() releases the lock when
        # it is collected
        handle = open(self.dir / "lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            pid = handle.read(32).strip() or "?"
            handle.close()
            raise SpoolLocked(
                f"spool {self.dir} is in use by another {self.owner} (pid {pid}); give each "
                f"{self.owner} its own spool_dir"
            ) from exc
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def _read_ack(self) -> Position:
        try:
            seg, off = (self.dir / "ack").read_text().split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            return Position(0, 0)
        except ValueError as exc:
            raise SpoolError(f"{self.dir / 'ack'} is corrupt") from exc

    def _repair_tail(self) -> None:
        path = self.dir / _segment_name(self._active)
        data = path.read_bytes() if path.exists() else b""
        _, end = _scan(data, 0)
        if end != len(data):
            log.warning("spool %s: dropping a torn tail of %d bytes", path, len(data) - end)
            with open(path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        self._sizes[self._active] = end

    def _count_pending(self) -> int:
        total = 0
        for seq in sorted(self._sizes):
            start = self.ack_pos.offset if seq == self.ack_pos.segment else 0
            data = (self.dir / _segment_name(seq)).read_bytes()
            frames, _ = _scan(data, start)
            total += len(frames)
        return total

    # -- public ------------------------------------------------------------------------------

    @property
    def depth_bytes(self) -> int:
        """Bytes written but not yet acknowledged."""
        total = sum(self._sizes.values())
        if self.ack_pos.segment in self._sizes:
            total -= self.ack_pos.offset
        return total

    def append(self, payloads: list[bytes]) -> None:
        """Write ``payloads`` durably (one fsync) or raise :class:`SpoolError` when full."""
        if not payloads:
            return
        blob = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        with self._lock:
            if self.depth_bytes + len(blob) > self.max_bytes:
                raise SpoolError(
                    f"spool {self.dir} full ({self.depth_bytes} of {self.max_bytes} bytes)"
                )
            try:
                if self._fh.closed:  # a failed write or roll could not reopen it: now
                    self._fh = open(self.dir / _segment_name(self._active), "ab")  # noqa: SIM115
                if (
                    self._sizes[self._active]
                    and self._sizes[self._active] + len(blob) > self.segment_bytes
                ):
                    self._roll()
                self._fh.write(blob)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except (OSError, ValueError) as exc:  # ValueError: a handle a failed roll closed
                self._rewind()
                raise SpoolWriteError(f"spool {self.dir}: write refused: {exc}") from exc
            self._sizes[self._active] += len(blob)
            self.pending += len(payloads)
            self._check_near_full()

    def peek(self, limit: int) -> tuple[list[bytes], Position]:
        """Up to ``limit`` payloads after the ack position, and the position after them."""
        with self._lock:
            out: list[bytes] = []
            pos = self.ack_pos
            for seq in sorted(s for s in self._sizes if s >= pos.segment):
                start = pos.offset if seq == pos.segment else 0
                with open(self.dir / _segment_name(seq), "rb") as fh:
                    fh.seek(start)
                    data = fh.read(self._sizes[seq] - start)
                frames, end = _scan(data, 0, limit - len(out))
                out.extend(frames)
                pos = Position(seq, start + end)
                if len(out) >= limit:
                    break
            return out, pos

    def ack(self, pos: Position, count: int) -> None:
        """Mark everything before ``pos`` (``count`` payloads) delivered; drop old segments."""
        with self._lock:
            previous, self.ack_pos = self.ack_pos, pos
            try:
                self._write_ack_unlocked()
            except OSError as exc:
                self.ack_pos = previous  # delivered again later: metering de-duplicates
                raise SpoolWriteError(f"spool {self.dir}: ack not written: {exc}") from exc
            self.pending = max(0, self.pending - count)
            for seq in [s for s in self._sizes if s < pos.segment]:
                (self.dir / _segment_name(seq)).unlink(missing_ok=True)
                del self._sizes[seq]
            if self.pending == 0 and pos.segment == self._active and pos.offset > 0:
                try:
                    self._roll()  # start afresh so the delivered segment can go
                except OSError as exc:  # the next ack tries again
                    log.warning("spool %s: could not start a new segment: %s", self.dir, exc)
            self._check_near_full()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._lock_fd.close()

    # -- internals ---------------------------------------------------------------------------

    def _rewind(self) -> None:
        """Undo a failed append: drop the buffered bytes, cut the segment to its last size."""
        path = self.dir / _segment_name(self._active)
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()  # its flush fails again; the buffer goes with the handle
        self._sizes.setdefault(self._active, 0)
        try:
            os.truncate(path, self._sizes[self._active])
            self._fh = open(path, "ab")  # noqa: SIM115
        except OSError as exc:  # a read-only disk: the next append reopens it
            log.error("spool %s: cannot cut back or reopen %s: %s", self.dir, path.name, exc)

    def _roll(self) -> None:
        self._fh.close()
        self._active += 1
        self._sizes[self._active] = 0
        self._fh = open(self.dir / _segment_name(self._active), "ab")  # noqa: SIM115
        self._fsync_dir()
        if self.pending == 0:
            self.ack_pos = Position(self._active, 0)
            self._write_ack_unlocked()
            for seq in [s for s in self._sizes if s < self._active]:
                (self.dir / _segment_name(seq)).unlink(missing_ok=True)
                del self._sizes[seq]

    def _write_ack_unlocked(self) -> None:
        tmp = self.dir / "ack.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{self.ack_pos.segment} {self.ack_pos.offset}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "ack")

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_near_full(self) -> None:
        near = self.depth_bytes >= self.warn_fraction * self.max_bytes
        if near and not self._near_full:
            log.warning(
                "spool %s near full: %d of %d bytes (metering unreachable?)",
                self.dir, self.depth_bytes, self.max_bytes,
            )  # fmt: skip
            if self._on_near_full is not None:
                self._on_near_full(self.depth_bytes, self.max_bytes)
        self._near_full = near

    @property
    def near_full(self) -> bool:
        return self._near_full
