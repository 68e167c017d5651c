"""Parsing of values with units: durations, rates, sizes, percentages.

Every value comes back in base units: seconds, events per second, bytes, and a
fraction in [0, 1] for percentages.  Plain numbers are taken as already in base
units.  A bad value raises :class:`UnitError` whose message says what was
expected, so scenario errors can name it.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "UnitError",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "parse_fraction",
    "format_duration",
    "format_rate",
]

SECONDS_PER = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}

BYTES_PER = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

_NUMBER = r"[-+]?(?:\d+(?:[_,]\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*([a-zA-Zµ]*)\s*$")


class UnitError(ValueError):
    """A value could not be read in the unit that was expected."""


def _number(text: str) -> float:
    return float(text.replace("_", "").replace(",", ""))


def _split(value: str, what: str, example: str) -> tuple[float, str]:
    match = _QUANTITY.match(value)
    if not match:
        raise UnitError(f"expected {what} like {example!r}, got {value!r}")
    return _number(match.group(1)), match.group(2)


def _finite(x: float, value: object, what: str) -> float:
    if not math.isfinite(x):
        raise UnitError(f"expected a finite {what}, got {value!r}")
    return x


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"30m"``, ``"21h"``, ``"1.5d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise UnitError(f"expected a duration like '250ms' or '30m', got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), value, "duration")
    if not isinstance(value, str):
        raise UnitError(f"expected a duration like '250ms' or '30m', got {value!r}")
    number, unit = _split(value, "a duration", "250ms")
    if unit == "":
        return _finite(number, value, "duration")
    factor = SECONDS_PER.get(unit) or SECONDS_PER.get(unit.lower())
    if factor is None:
        units = ", ".join(sorted(set(SECONDS_PER) - {"µs"}))
        raise UnitError(f"unknown time unit {unit!r} in {value!r}; expected one of {units}")
    return _finite(number * factor, value, "duration")


def parse_rate(value: object) -> float:
    """Events per second from ``"80000/min"``, ``"1333/s"``, ``"20/h"`` or a number per second."""
    if isinstance(value, bool):
        raise UnitError(f"expected a rate like '80000/min' or '1333/s', got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), value, "rate")
    if not isinstance(value, str) or "/" not in value:
        raise UnitError(f"expected a rate like '80000/min' or '1333/s', got {value!r}")
    count_text, _, per = value.partition("/")
    try:
        count = _number(count_text.strip())
    except ValueError:
        raise UnitError(f"expected a rate like '80000/min', got {value!r}") from None
    per = per.strip()
    match = _QUANTITY.match(per) if per and per[0].isdigit() else None
    if match:  # "500/10s"
        span = parse_duration(per)
    else:
        unit = per
        factor = SECONDS_PER.get(unit) or SECONDS_PER.get(unit.lower())
        if factor is None:
            units = ", ".join(sorted(set(SECONDS_PER) - {"µs"}))
            raise UnitError(f"unknown time unit {per!r} in rate {value!r}; expected one of {units}")
        span = factor
    return _finite(count / span, value, "rate")


def parse_size(value: object) -> float:
    """Bytes from ``"2MB"``, ``"512KiB"`` or a number of bytes."""
    if isinstance(value, bool):
        raise UnitError(f"expected a size like '2MB', got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), value, "size")
    if not isinstance(value, str):
        raise UnitError(f"expected a size like '2MB', got {value!r}")
    number, unit = _split(value, "a size", "2MB")
    factor = BYTES_PER.get(unit.lower() or "b")
    if factor is None:
        raise UnitError(f"unknown size unit {unit!r} in {value!r}; expected one of {', '.join(BYTES_PER)}")
    return _finite(number * factor, value, "size")


def parse_fraction(value: object) -> float:
    """A fraction from ``"74.2%"`` or a plain number (0.742).  Range is checked by the caller."""
    if isinstance(value, bool):
        raise UnitError(f"expected a probability like '75%' or 0.75, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), value, "probability")
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                return _finite(_number(text[:-1].strip()) / 100.0, value, "percentage")
            return _finite(_number(text), value, "probability")
        except ValueError:
            pass
    raise UnitError(f"expected a probability like '75%' or 0.75, got {value!r}")


def format_duration(seconds: float) -> str:
    """A short human reading of a duration: ``"850ms"``, ``"12.3s"``, ``"4m05s"``, ``"21h00m"``."""
    if not math.isfinite(seconds):
        return "-" if math.isnan(seconds) else "never"
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s:02d}s"
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h{rest // 60:02d}m"


def format_rate(per_second: float) -> str:
    """``"1,333/s"`` or ``"12.5/min"`` for slow rates."""
    if per_second >= 1:
        return f"{per_second:,.0f}/s"
    return f"{per_second * 60:.3g}/min"
