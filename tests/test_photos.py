"""The reference server's photo store: append-only segments, one write and one fdatasync per photo."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from refserver.photos import ALIGN, PhotoStore


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["disk", "tmpfs"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The project's temporary directory (O_DIRECT), or one on tmpfs, which has no O_DIRECT (the page cache instead)."""
    if request.param == "disk":
        return tmp_path
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    made = Path(tempfile.mkdtemp(dir=shm))
    request.addfinalizer(lambda: shutil.rmtree(made, ignore_errors=True))
    return made


def test_concurrent_puts_each_get_their_own_bytes_back(folder: Path) -> None:
    # 8 threads x 40 photos of different sizes into 20 KB segments: every locator reads back its own bytes,
    # the ranges never overlap, every segment but the last is full, and every closed segment's descriptor is let go
    store = PhotoStore(folder, segment_bytes=20_000)
    fds = open_fds()
    found: dict[str, bytes] = {}
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(40):
            data = bytes([k]) * (500 + 37 * i) + i.to_bytes(2, "big")
            locator = store.put(data)
            with lock:
                found[locator] = data

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 320
    assert all(store.get(locator) == data for locator, data in found.items())
    by_segment: dict[str, list[tuple[int, int]]] = {}
    for locator in found:
        name, offset, length = locator.rsplit(":", 2)
        by_segment.setdefault(name, []).append((int(offset), int(length)))
    for ranges in by_segment.values():
        ranges.sort()
        assert all(a % ALIGN == 0 for a, _ in ranges)  # O_DIRECT: every photo at an aligned offset
        assert all(b - ALIGN < a + n <= b for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False))  # back to back, padded, no overlap
        assert ranges[0][0] == 0 and ranges[-1][0] + ranges[-1][1] <= 20_000
    assert len(by_segment) >= sum(len(d) for d in found.values()) / 20_000
    assert open_fds() == fds + 1  # only the current segment stays open
    store.close()
    assert open_fds() == fds
    with pytest.raises(RuntimeError, match="closed"):
        store.put(b"x")


def test_a_restarted_store_starts_a_new_segment_and_keeps_the_old(tmp_path: Path) -> None:
    first = PhotoStore(tmp_path)
    a = first.put(b"\xff\xd8\xff first")
    first.close()
    second = PhotoStore(tmp_path)
    b = second.put(b"\x89PNG second")
    second.close()
    assert a.startswith("segment-000001.bin:0:") and b.startswith("segment-000002.bin:0:")
    assert PhotoStore(tmp_path).get(a) == b"\xff\xd8\xff first"


def test_a_photo_larger_than_a_segment_gets_one_of_its_own(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path, segment_bytes=100)
    small = store.put(b"a" * 60)
    big = store.put(b"b" * 250)
    after = store.put(b"c" * 10)
    store.close()
    assert [x.split(":")[0] for x in (small, big, after)] == ["segment-000001.bin", "segment-000002.bin", "segment-000003.bin"]
    assert store.get(big) == b"b" * 250


def test_bad_locators_and_empty_photos_are_refused(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path)
    good = store.put(b"12345")
    store.close()
    for bad in ("../secret:0:5", "segment-000001.bin", "segment-000001.bin:x:5", "segment-000001.bin:0:-5"):
        with pytest.raises(ValueError, match="not a photo locator"):
            store.get(bad)
    name = good.split(":")[0]
    with pytest.raises(ValueError, match="ends before"):
        store.get(f"{name}:{ALIGN}:5")
    with pytest.raises(ValueError, match="empty"):
        PhotoStore(tmp_path).put(b"")


def _has_o_direct(folder: Path) -> bool:
    try:
        fd = os.open(folder / ".o_direct", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    (folder / ".o_direct").unlink()
    return True


def test_segments_on_disk_bypass_the_page_cache(tmp_path: Path) -> None:
    # O_DIRECT (octal 040000 in /proc's flags) where the file system has it: the photos take no fresh page-cache memory
    if not _has_o_direct(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no O_DIRECT (tmpfs?)")
    store = PhotoStore(tmp_path)
    store.put(b"\xff\xd8\xff" + bytes(5000))
    fd = store._current.fd  # type: ignore[union-attr]
    flags = int(next(line for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if line.startswith("flags:")).split()[1], 8)
    store.close()
    assert flags & os.O_DIRECT
    assert (tmp_path / "segment-000001.bin").stat().st_size == 2 * ALIGN  # the photo, padded to the alignment
