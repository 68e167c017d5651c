"""Uploaded photos, appended to segment files: one write and one fdatasync each.

A file per photo costs the kernel an inode, a directory entry, a rename and the
directory's fsync on every upload.  Here a photo is written at the end of the
current segment (``segment-NNNNNN.bin``) with ``os.pwrite`` and made durable
with ``os.fdatasync``, which also lands the file's new size; the segment's own
name was made durable (its directory fsynced) when the segment was created.
Only then does :meth:`PhotoStore.put` return the photo's locator,
``segment-NNNNNN.bin:OFFSET:LENGTH``, which the request's database write commits.

Segments are written with ``O_DIRECT`` where the file system allows it (each
photo from a reused, page-aligned buffer, at an offset rounded up to
:data:`ALIGN`), so the photos do not pass through the page cache.  Through the
page cache, every photo takes fresh pages of memory, and on a virtual machine
that hands freed memory back to its host (free page reporting) a fresh page
costs a fault in the host on first touch, billed to the writing thread: on the
development machine the same 300 KB write + fdatasync went from 0.42-0.54 ms
of CPU to 1.6-1.8 ms once about a gigabyte had been written, while with
``O_DIRECT`` it stayed at 0.42-0.53 ms (README, "Where the model stands").

Several worker threads may write at once: each takes its own range of the
segment under a lock and writes it outside the lock.  A range whose write has
not yet returned reads as zeros after a crash, and no locator points at it,
since its upload was never answered.  A full segment (:data:`SEGMENT_BYTES`) is
closed once its last writer is done; a restarted server starts a new segment.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PhotoStore", "SEGMENT_BYTES", "PUT_CALLS", "ALIGN"]

SEGMENT_BYTES = 256 << 20
ALIGN = 4096  # O_DIRECT's offsets, lengths and buffer addresses are multiples of this
PUT_CALLS = 2  # pwrite and fdatasync: the calls of a put that give up the interpreter lock (a new segment adds three)
_NAME = re.compile(r"segment-(\d{6})\.bin")
_LOCATOR = re.compile(r"(segment-\d{6}\.bin):(\d+):(\d+)")


def _write_all(seg: _Segment, out: memoryview, offset: int) -> None:
    written = 0
    while written < len(out):  # pwrite may write less than asked (a signal, a full disk)
        n = os.pwrite(seg.fd, out[written:], offset + written)
        if n == 0:
            raise OSError(f"no bytes written to {seg.name}")
        written += n


@dataclass
class _Segment:
    name: str
    fd: int
    direct: bool
    size: int = 0
    writers: int = 0
    full: bool = False


class PhotoStore:
    """Durable, append-only photo storage in ``folder``."""

    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.fullmatch(p.name))]
        self._next = max(numbers, default=0) + 1
        self._current: _Segment | None = None
        self._closed = False
        self._buffers = threading.local()  # each writing thread's page-aligned buffer, reused

    def _open_segment(self) -> _Segment:
        name = f"segment-{self._next:06d}.bin"
        self._next += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        direct = hasattr(os, "O_DIRECT")
        try:
            fd = os.open(self.folder / name, flags | (os.O_DIRECT if direct else 0), 0o600)
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL:
                raise
            direct = False  # a file system without O_DIRECT (tmpfs): through the page cache
            fd = os.open(self.folder / name, flags, 0o600)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)  # the segment's name is on disk before any locator names it
        finally:
            os.close(folder)
        return _Segment(name, fd, direct)

    def put(self, data: bytes) -> str:
        """Write ``data`` durably and return its locator (blocking: run it in a worker thread)."""
        if not data:
            raise ValueError("an empty photo")
        with self._lock:
            if self._closed:
                raise RuntimeError("the photo store is closed")
            span = -(-len(data) // ALIGN) * ALIGN  # every photo starts at an aligned offset
            seg = self._current
            if seg is None or seg.size + span > self.segment_bytes and seg.size > 0:
                if seg is not None:
                    self._retire(seg)
                seg = self._current = self._open_segment()
            offset = seg.size
            seg.size += span
            seg.writers += 1
        try:
            if seg.direct:
                buf = self._buffer(span)
                buf[: len(data)] = data
                buf[len(data) : span] = bytes(span - len(data))
                with memoryview(buf) as view:
                    _write_all(seg, view[:span], offset)
            else:
                with memoryview(data) as view:
                    _write_all(seg, view, offset)
            os.fdatasync(seg.fd)
        finally:
            with self._lock:
                seg.writers -= 1
                if seg.full and seg.writers == 0:
                    os.close(seg.fd)
        return f"{seg.name}:{offset}:{len(data)}"

    def _buffer(self, size: int) -> mmap.mmap:
        """This thread's page-aligned buffer of at least ``size`` bytes (anonymous memory, kept for the next photo)."""
        buf: mmap.mmap | None = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            if buf is not None:
                buf.close()
            buf = mmap.mmap(-1, max(size, 1 << 20))
            self._buffers.buf = buf
        return buf

    def _retire(self, seg: _Segment) -> None:
        """Mark ``seg`` full (caller holds the lock); it is closed when its last writer is done."""
        seg.full = True
        if seg.writers == 0:
            os.close(seg.fd)

    def get(self, locator: str) -> bytes:
        """The photo at ``locator`` (as returned by :meth:`put`)."""
        found = _LOCATOR.fullmatch(locator)
        if found is None:
            raise ValueError(f"not a photo locator (segment-NNNNNN.bin:OFFSET:LENGTH): {locator!r}")
        name, offset, length = found.groups()
        with open(self.folder / name, "rb") as f:
            f.seek(int(offset))
            data = f.read(int(length))
        if len(data) != int(length):
            raise ValueError(f"{locator}: the segment ends before the photo does")
        return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._retire(self._current)
                self._current = None
