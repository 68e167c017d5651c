"""Run directories and progress lines: what every command writes and shows."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from models.units import format_duration

__all__ = ["run_dir", "ProgressBar", "say", "machine_description"]


def run_dir(out: str | Path | None, kind: str) -> Path:
    """``out`` when given, else ``runs/<timestamp>-<kind>`` (not created)."""
    if out:
        return Path(out)
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{kind}"


def say(command: str, text: str, quiet: bool = False) -> None:
    """One progress line on stderr, prefixed with the command (nothing when ``quiet``)."""
    if not quiet:
        print(f"capacity {command}: {text}", file=sys.stderr, flush=True)


class ProgressBar:
    """Progress over simulated time on stderr: a live bar on a terminal, a line per 10 % otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, width: int = 30):
        self.label = label
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1

    def __call__(self, done: float, total: float) -> None:
        frac = min(1.0, done / total) if total > 0 else 1.0
        now = time.monotonic()
        elapsed = now - self.started
        text = f"{self.label} {frac:6.1%}  simulated {format_duration(done)} of {format_duration(total)}  wall {elapsed:.0f}s"
        if 0 < frac < 1:
            text += f"  eta {elapsed / frac - elapsed:.0f}s"
        if self.tty:
            if now - self.last_draw < 0.2 and frac < 1:
                return
            self.last_draw = now
            filled = int(frac * self.width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}\033[K")
            if frac >= 1:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(text + "\n")
        self.stream.flush()


def machine_description() -> str:
    """This machine in one line: host, CPU model and count, Python (what a measurement's figures belong to)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
