"""The server's photo store against a file per photo, side by side in one run.

Every photo upload the server answers is made durable before the answer, and
the kernel's part of that is CPU time on the server's core.  This writes
300 KB photos at a steady rate from ``threads`` worker threads (as the server's
storage station does) in alternating rounds:

- **file per photo** (the baseline, what the server did before): a temporary
  file written, flushed, fsynced and closed, renamed into place, and the
  directory fsynced so that the new name is durable too;
- **segment store** (``refserver.photos.PhotoStore``): one ``pwrite`` at the end of
  the current segment and one ``fdatasync``, with ``O_DIRECT`` (no page cache).

Prints the CPU time per photo (the writing threads' own CPU time, user and
kernel), its spread over the rounds, and the ratio of the medians.  Both write
to the same file system (``--dir``, default a temporary directory beside the
project, on the disk the server's data uses).  Pinned to CPU 0 when it can be.

Run: .venv/bin/python benchmarks/bench_photos.py [--rounds 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refserver.photos import PhotoStore  # noqa: E402

PHOTO = b"\xff\xd8\xff" + os.urandom(300_000 - 3)


def file_per_photo(folder: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    def put(k: int) -> None:
        path = folder / f"{k}.jpg"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(PHOTO)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return put, lambda: None


def segment_store(folder: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    store = PhotoStore(folder)
    return lambda _k: store.put(PHOTO) and None, store.close


def run_round(
    make: Callable[[Path], tuple[Callable[[int], None], Callable[[], None]]], folder: Path, rate: float, seconds: float, threads: int
) -> tuple[float, int]:
    """CPU seconds per photo over one round, and the photos written."""
    folder.mkdir(parents=True)
    put, close = make(folder)
    cpu = [0.0] * threads
    done = [0] * threads
    start = time.monotonic()

    def worker(i: int) -> None:
        c0 = time.thread_time()
        k = i
        while True:
            due = start + k / rate  # photo k is due at k / rate; thread i takes every threads-th one
            if due - start >= seconds:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            put(k)
            done[i] += 1
            k += threads
        cpu[i] = time.thread_time() - c0

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    close()
    shutil.rmtree(folder)
    n = sum(done)
    return sum(cpu) / max(n, 1), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    ap.add_argument(
        "--rate", type=float, default=57.0, help="photos a second (57: the upload rate at 0.9 of the Prakerja validation's saturation)"
    )
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory under the project)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    base = Path(tempfile.mkdtemp(prefix="bench-photos-", dir=args.dir or ROOT))
    kinds = {"file per photo": file_per_photo, "segment store": segment_store}
    seen: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for name, make in kinds.items():
                per, n = run_round(make, base / f"{r}-{len(seen[name])}-{name.split()[0]}", args.rate, args.seconds, args.threads)
                seen[name].append(per)
                print(f"round {r + 1}: {name:15s} {n} photos, {per * 1000:.3f} ms CPU each", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    for name, xs in seen.items():
        print(f"{name:15s} median {statistics.median(xs) * 1000:.3f} ms CPU per photo (rounds {min(xs) * 1000:.3f}-{max(xs) * 1000:.3f})")
    ratio = statistics.median(seen["segment store"]) / statistics.median(seen["file per photo"])
    print(f"segment store / file per photo: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
