"""A calibration: the overlay that ``capacity calibrate`` writes, as one typed object.

An overlay is a YAML mapping merged onto a scenario (``system.stations.*.service``,
``system.overhead``, ``system.cpu``).  :class:`Calibration` carries it with
where it came from, reads it from a file with a clear error, and gives the
processor section (``system.cpu``) typed access, so that no caller digs
through nested dicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.scenario import Scenario

__all__ = ["Calibration", "CalibrationError"]


class CalibrationError(ValueError):
    """A calibration file cannot be used: missing, unreadable, not a mapping, or not valid on the scenario."""


@dataclass(frozen=True)
class Calibration:
    """A calibration overlay and its provenance.

    ``overlay`` is the YAML-ready mapping (empty: the scenario's configured
    service times); ``source`` says where it came from (a file path, or what
    ran); ``header`` holds the ``#`` comment lines the file began with (when and
    at what load it was measured).
    """

    overlay: dict[str, Any] = field(default_factory=dict)
    source: str = "none: the scenario's configured service times"
    header: str = ""

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        """Read a calibration file written by ``capacity calibrate``; :class:`CalibrationError` when it cannot be."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{p}: expected a calibration overlay (YAML mapping) written by capacity calibrate: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CalibrationError(f"{p}: expected a calibration overlay (YAML mapping) written by capacity calibrate: {exc}") from None
        if not isinstance(data, dict):
            raise CalibrationError(f"{p}: expected a calibration overlay (YAML mapping) written by capacity calibrate")
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        return cls(data, str(p), header)

    @property
    def empty(self) -> bool:
        return not self.overlay

    @property
    def cpu(self) -> dict[str, Any] | None:
        """The overlay's ``system.cpu`` section (YAML-ready), None when it has none."""
        system = self.overlay.get("system")
        cpu = system.get("cpu") if isinstance(system, dict) else None
        return cpu if isinstance(cpu, dict) else None

    def with_cpu(self, cpu: dict[str, Any], source: str | None = None) -> Calibration:
        """A copy whose ``system.cpu`` section is ``cpu`` (the rest unchanged)."""
        overlay = copy.deepcopy(self.overlay)
        system = overlay.setdefault("system", {})
        system["cpu"] = cpu
        return Calibration(overlay, source or self.source, self.header)

    def apply(self, scenario_file: str | Path) -> Scenario:
        """The scenario in ``scenario_file`` with this calibration merged on (:class:`models.loader.ScenarioError` when invalid)."""
        from models.loader import load_scenario

        return load_scenario(scenario_file, overlay=self.overlay)

    def on(self, scenario: Scenario) -> Scenario:
        """``scenario`` (read from its file) with this calibration merged on."""
        if self.empty:
            return scenario
        if scenario.path is None:
            raise CalibrationError(f"scenario {scenario.name!r} was not read from a file, so a calibration cannot be merged onto it")
        return self.apply(scenario.path).with_run(**scenario.run.model_dump())

    def write(self, path: Path, header: str) -> None:
        """Write the overlay as YAML below ``header`` (comment lines)."""
        path.write_text(header + yaml.safe_dump(self.overlay, sort_keys=False))
