"""Uploaded photos, appended to segment files: one write and one fdatasync each.

A file per photo costs the kernel an inode, a directory entry, a rename and the
directory's fsync on every upload, and on the development machine that kernel
work was the server's most variable CPU time (see README, "Where the model
stands").  Here a photo is written at the end of the current segment
(``segment-NNNNNN.bin``) with ``os.pwrite`` and made durable with
``os.fdatasync``, which also lands the file's new size; the segment's own name
was made durable (its directory fsynced) when the segment was created.  Only
then does :meth:`PhotoStore.put` return the photo's locator,
``segment-NNNNNN.bin:OFFSET:LENGTH``, which the request's database write commits.

Several worker threads may write at once: each takes its own range of the
segment under a lock and writes it outside the lock.  A range whose write has
not yet returned reads as zeros after a crash, and no locator points at it,
since its upload was never answered.  A full segment (:data:`SEGMENT_BYTES`) is
closed once its last writer is done; a restarted server starts a new segment.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PhotoStore", "SEGMENT_BYTES", "PUT_CALLS"]

SEGMENT_BYTES = 256 << 20
PUT_CALLS = 2  # pwrite and fdatasync: the calls of a put that give up the interpreter lock (a new segment adds three)
_NAME = re.compile(r"segment-(\d{6})\.bin")


@dataclass
class _Segment:
    name: str
    fd: int
    size: int = 0
    writers: int = 0
    full: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


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

    def _open_segment(self) -> _Segment:
        name = f"segment-{self._next:06d}.bin"
        self._next += 1
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)  # the segment's name is on disk before any locator names it
        finally:
            os.close(folder)
        return _Segment(name, fd)

    def put(self, data: bytes) -> str:
        """Write ``data`` durably and return its locator (blocking: run it in a worker thread)."""
        if not data:
            raise ValueError("an empty photo")
        with self._lock:
            if self._closed:
                raise RuntimeError("the photo store is closed")
            seg = self._current
            if seg is None or seg.size + len(data) > self.segment_bytes and seg.size > 0:
                if seg is not None:
                    self._retire(seg)
                seg = self._current = self._open_segment()
            offset = seg.size
            seg.size += len(data)
            seg.writers += 1
        try:
            written = 0
            while written < len(data):  # pwrite may write less than asked (a signal, a full disk)
                n = os.pwrite(seg.fd, memoryview(data)[written:], offset + written)
                if n == 0:
                    raise OSError(f"no bytes written to {seg.name}")
                written += n
            os.fdatasync(seg.fd)
        finally:
            with self._lock:
                seg.writers -= 1
                if seg.full and seg.writers == 0:
                    os.close(seg.fd)
        return f"{seg.name}:{offset}:{len(data)}"

    def _retire(self, seg: _Segment) -> None:
        """Mark ``seg`` full (caller holds the lock); it is closed when its last writer is done."""
        seg.full = True
        if seg.writers == 0:
            os.close(seg.fd)

    def get(self, locator: str) -> bytes:
        """The photo at ``locator`` (as returned by :meth:`put`)."""
        name, offset, length = locator.rsplit(":", 2)
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a photo locator: {locator!r}")
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
