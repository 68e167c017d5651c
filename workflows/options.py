"""Command-line options checked for the workflows; a bad value raises :class:`BadInput` saying what was expected."""

from __future__ import annotations

from models.overlay import Calibration, CalibrationError
from models.scenario import Scenario
from models.units import UnitError, format_duration, parse_duration, parse_fraction
from workflows import BadInput

__all__ = ["calibration_option", "duration_option", "levels_option", "run_slice", "fault_option", "effects_option"]


def calibration_option(value: str | None) -> Calibration | None:
    """--calibration FILE, or 'none' (the configured service times), or None (not given)."""
    if value is None:
        return None
    if value == "none":
        return Calibration()
    try:
        return Calibration.read(value)
    except CalibrationError as exc:
        raise BadInput(f"--calibration {exc}") from None


def duration_option(text: str | None, default: float, low: float = 5.0, high: float = 3600.0) -> float:
    if text is None:
        return default
    try:
        value = parse_duration(text)
    except UnitError as exc:
        raise BadInput(f"--duration: {exc}") from None
    if not low <= value <= high:
        raise BadInput(f"--duration must be between {format_duration(low)} and {format_duration(high)}, got {text!r}")
    return value


def levels_option(text: str | None, default: list[float]) -> list[float]:
    if text is None:
        return list(default)
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--levels must be fractions separated by commas, e.g. 0.3,0.6,0.9; got {text!r}") from None
    if not levels or any(not 0 < x <= 3 for x in levels):
        raise BadInput(f"--levels must be fractions of the saturation rate in (0, 3], e.g. 0.3,0.6,0.9; got {text!r}")
    return sorted(levels)


def run_slice(scenario: Scenario, scale: str | None, window: list[str] | None) -> Scenario:
    """--scale and --window applied to the scenario's run slice."""
    changes: dict[str, object] = {}
    try:
        if scale is not None:
            changes["scale"] = parse_fraction(scale)
            if not 0 < parse_fraction(scale) <= 1:
                raise UnitError(f"--scale must be in (0, 1], got {scale!r}")
        if window is not None:
            span = (parse_duration(window[0]), parse_duration(window[1]))
            if not 0 <= span[0] < span[1] <= scenario.horizon:
                raise UnitError(f"--window must lie within [0, {format_duration(scenario.horizon)}] and end after it starts")
            changes["window"] = span
    except UnitError as exc:
        raise BadInput(str(exc)) from None
    return scenario.with_run(**changes) if changes else scenario


def fault_option(values: list[str] | None, flag: str = "--server-fault") -> dict[str, float]:
    """``slow=30%`` / ``cpu=2ms`` / ``delay=5ms`` (``flag`` repeated) as the server's fault settings."""
    out: dict[str, float] = {}
    for text in values or []:
        key, _, value = text.partition("=")
        try:
            if key == "slow":
                out[key] = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
            elif key in ("cpu", "delay"):
                out[key] = parse_duration(value)
            else:
                raise UnitError(f"unknown fault {key!r}")
        except (UnitError, ValueError) as exc:
            raise BadInput(f"{flag} {text!r}: expected slow=30%, cpu=2ms or delay=5ms ({exc})") from None
        if not 0 <= out[key] <= 60:
            raise BadInput(f"{flag} {text!r}: must lie between 0 and 60")
    return out


def effects_option(values: list[str] | None) -> dict[str, float]:
    """``--min-effect p95=15%`` (repeatable): the smallest change of a metric that counts as a regression."""
    from models.regression import METRICS

    out: dict[str, float] = {}
    for text in values or []:
        key, _, value = text.partition("=")
        if key not in METRICS:
            raise BadInput(f"--min-effect {text!r}: expected one of {', '.join(METRICS)}, e.g. p95=15%")
        try:
            out[key] = parse_fraction(value)
        except UnitError as exc:
            raise BadInput(f"--min-effect {text!r}: {exc}") from None
    return out
