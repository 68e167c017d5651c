"""The validation report: model against measured runs, per load level (HTML + JSON + PNG plots)."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.compare import CPU_SUBJECT, Check
from models.histogram import Histogram
from models.results import RunResult
from reports.summary import table

__all__ = ["Level", "Speed", "Disk", "Placement", "Knee", "verdict_table", "write_report"]


@dataclass(frozen=True)
class Speed:
    """The machine's speed at a level, as CPU time now over at calibration (1.1: 10 % slower).

    Either the calibration's processor load run again just before and just
    after the level (``before``, ``after``: ``factor`` is their mean), or, on a
    server that does a fixed computation per request (the reference server's
    ``reference_server.work``), that computation's CPU time during the level
    itself (``during``: ``factor``).  The factor scales the calibrated
    processor's CPU times for this level.
    """

    before: float | None
    after: float | None
    during: float | None = None
    trace: list[float] | None = None  # with ``during``: the speed in each interval of the level, relative to ``during``

    @property
    def factor(self) -> float:
        if self.during is not None:
            return self.during
        found = [x for x in (self.before, self.after) if x is not None]
        return sum(found) / len(found) if found else 1.0

    def describe(self) -> str:
        if self.during is not None:
            swing = f"; {min(self.trace):.2f} to {max(self.trace):.2f} x that in its intervals" if self.trace else ""
            return f"the machine's CPU time per request {self.factor:.3f} x calibration's (the server's fixed work during the level{swing})"
        parts = [f"{name} {x:.3f}" for name, x in (("before", self.before), ("after", self.after)) if x is not None]
        return f"the machine's CPU time per request {self.factor:.3f} x calibration's (reference load {', '.join(parts) or 'not measured'})"

    def to_dict(self) -> dict[str, float | list[float] | None]:
        return {"factor": self.factor, "before": self.before, "after": self.after, "during": self.during, "trace": self.trace}


@dataclass(frozen=True)
class Disk:
    """The disk's part of a db visit (the flush of its database write's batch), seconds: at calibration and in the level.

    The cross-check given the level's own CPU time also takes the level's
    own flush times: the db station's service times move by the difference.
    """

    calibrated: float
    level: float
    taken: bool = True  # False: shown only, the processor too busy for the flush times to be the disk's alone
    stalls: int = 0  # scrape intervals of the level in which the disk's flushes stalled (models.calibrate.disk_stalls)
    intervals: int = 0  # of the level's scrape intervals

    def describe(self) -> str:
        shown = "" if self.taken else " (not taken: on a processor this busy they include the writer's waits for the interpreter lock)"
        stalled = f"; the disk stalled in {self.stalls} of the level's {self.intervals} scrape intervals" if self.stalls else ""
        return (
            f"database flushes {self.level * 1000:.3g} ms a db visit against calibration's {self.calibrated * 1000:.3g} ms{shown}{stalled}"
        )

    def to_dict(self) -> dict[str, float | bool | int]:
        return {"calibrated": self.calibrated, "level": self.level, "taken": self.taken, "stalls": self.stalls, "intervals": self.intervals}


@dataclass(frozen=True)
class Placement:
    """The machine's speed a level's rate was placed by: read in the level before it (``read_in``, its fraction).

    With the processor as the knee, a machine 4 % slower than at calibration
    saturates 4 % sooner; the level's rate is its fraction of the saturation
    rate at that speed (the calibrated rate over ``speed``), so that a level
    near the knee stays below it when the machine has slowed.
    """

    speed: float
    read_in: float

    def describe(self) -> str:
        return f"rate placed at the machine's speed read in level {self.read_in:g} ({self.speed:.3f} x calibration's CPU time)"

    def to_dict(self) -> dict[str, float]:
        return {"speed": self.speed, "read_in": self.read_in}


@dataclass
class Level:
    """One load level: its fraction of the saturation rate, its runs and its checks."""

    fraction: float
    rate: float  # arrivals per second
    models: list[RunResult]
    measured: RunResult
    checks: list[Check] = field(default_factory=list)
    # the same comparison with the model given this level's own measured CPU time per request
    # (operational): tells a wrong model from a processor whose speed moved since calibration
    given_cpu: list[Check] | None = None
    # the machine's speed at the level (validate --speed-reference): the calibrated processor was scaled by it
    speed: Speed | None = None
    # the disk's flushes in the level against calibration's (the given-CPU model takes the level's)
    disk: Disk | None = None
    # the machine's speed its rate was placed by (None: placed at calibration's)
    placed: Placement | None = None
    # the model against itself: per replication, the checks it fails against the others (models.compare.chance)
    chance: list[list[str]] | None = None

    def by_chance(self) -> str | None:
        """One line on what the level's tolerances fail by the model's own sampling noise (None without replications)."""
        if not self.chance:
            return None
        counts = [len(f) for f in self.chance]
        names = sorted({name for f in self.chance for name in f})
        which = f": {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}" if names else ""
        return (
            f"the model against itself (each of its {len(counts)} replications judged as if measured, against the others) "
            f"fails {'/'.join(str(n) for n in counts)} checks{which}"
        )

    @property
    def passed(self) -> bool:
        return all(c.verdict != "fail" for c in self.checks)

    def within_noise(self) -> str | None:
        """One line on the checks outside their tolerance by less than their margin (None when there are none): what a
        strict reading of the tolerances would fail, and the sampling noise that leaves the miss unresolved."""
        noisy = [c for c in self.checks if c.verdict == "noise"]
        if not noisy:
            return None
        shown = ", ".join(f"{c.subject} {c.metric} {_err(c)} (±{_tol(c, c.tolerance)} + {_tol(c, c.margin, 1)})" for c in noisy[:6])
        more = f" and {len(noisy) - 6} more" if len(noisy) > 6 else ""
        return (
            f"{len(noisy)} of {sum(c.verdict != 'info' for c in self.checks)} judged checks are outside their tolerance by less than "
            f"one run's sampling noise (tolerance + margin): {shown}{more}; a longer level would resolve them"
        )

    @property
    def cpu_drift(self) -> float | None:
        """The level's measured server CPU over the model's, minus 1: how far the processor's speed moved from calibration
        (from the speed the reference runs found, when the model was scaled by it)."""
        for c in self.checks:
            if c.subject == CPU_SUBJECT and c.metric == "utilization" and c.model > 0:
                return c.measured / c.model - 1
        return None

    def diagnosis(self) -> str | None:
        """One line on what a calibrated level's verdict owes to the machine: the processor's speed and the disk's writes.

        None with neither the operational comparison, a speed reference, a placement nor the level's write times.
        """
        machine = [x.describe() for x in (self.placed, self.speed, self.disk) if x is not None]
        if self.given_cpu is None:
            return "; ".join(machine) or None
        failed = [f"{c.subject} {c.metric} {_err(c)}" for c in self.given_cpu if c.verdict == "fail"]
        drift = self.cpu_drift
        head = "".join(f"{m}; " for m in machine)
        disk = self.disk is not None and self.disk.taken
        given = "given the level's own CPU time per request" + (" and the disk's flush times" if disk else "")
        if drift is not None:
            unscaled = f" ({(1 + drift) * self.speed.factor - 1:+.1%} unscaled)" if self.speed is not None else ""
            head += f"server CPU {drift:+.1%} against the calibrated model{' so scaled' if self.speed is not None else ''}{unscaled}; "
        if self.passed:
            return head + f"{given} the model " + ("passes too" if not failed else f"fails: {', '.join(failed)}")
        if not failed:
            speed = "the processor's speed" + (" and the disk's" if disk else "")
            return head + f"{given} every check passes: the misses are {speed}, not the model's structure"
        return head + f"{given} it still fails: {', '.join(failed)}"


@dataclass(frozen=True)
class Knee:
    """The predicted saturation throughput of the bottleneck's request type against the highest measured.

    ``arrival_rate`` and ``law`` are the utilization law's saturation (the
    bottleneck's demand per arrival, every arrival bringing its whole funnel),
    which places the levels.  Once a level at or past it was run, ``predicted``
    is the model's own throughput at the level that carried the most
    (``model_level``): past the knee the door turns requests away, an admitted
    registration brings less work after it than the law counts, and more of
    them fit (docs/validation.md, "The knee judged by the model's own
    saturation").  Otherwise ``predicted`` is the law's, a ceiling.
    """

    resource: str
    request: str
    arrival_rate: float  # registrants/s at saturation by the utilization law
    predicted: float  # requests/s of ``request`` at saturation: the model's at ``model_level`` when reached, else ``law``
    measured: float  # highest requests/s measured at any level
    reached: bool  # a level at or above saturation was run
    tolerance: float
    speed: float | None = None  # the machine's speed at the level that carried the most, when the prediction was scaled by it
    law: float | None = None  # requests/s of ``request`` at saturation by the utilization law (None: ``predicted`` is it)
    model_level: float | None = None  # the level whose model run gave ``predicted`` (None: the law gave it)

    @property
    def verdict(self) -> str:
        if self.predicted <= 0 or math.isnan(self.measured):
            return "info"
        if self.reached:
            return "pass" if abs(self.measured / self.predicted - 1) <= self.tolerance else "fail"
        return "pass" if self.measured <= self.predicted * (1 + self.tolerance) else "fail"


def _fmt(metric: str, v: float) -> str:
    if math.isnan(v):
        return "-"
    if metric == "cpu /request":
        return f"{v * 1000:.3g}ms"
    if re.fullmatch(r"(completion )?p\d+|loop lag", metric):
        return f"{v * 1000:.1f}ms"
    if "rate" in metric or metric == "utilization":
        return f"{v:.2%}"
    return f"{v:.4g}"


def _err(c: Check) -> str:
    if math.isinf(c.error) or math.isnan(c.error):
        return "-"
    if c.relative:
        return f"{c.error:+.1%}"
    return f"{c.error * 100:+.2f} pt" if ("rate" in c.metric or c.metric == "utilization") else f"{c.error:+.3g}"


def _tol(c: Check, x: float | None, digits: int = 0) -> str:
    """A tolerance or margin in the check's error units."""
    if x is None:
        return "-"
    return f"{x:.{digits}%}" if c.relative else f"{x * 100:.{digits}f} pt"


def verdict_table(checks: Sequence[Check], judged_only: bool = False) -> str:
    """The checks as a table; a judged check's margin (its sampling noise, 95 %) beside its tolerance."""
    rows = []
    for c in checks:
        if judged_only and c.verdict == "info":
            continue
        tol = "-" if c.tolerance is None else f"±{_tol(c, c.tolerance)}"
        margin = f"±{_tol(c, c.margin, 1)}" if c.tolerance is not None and c.margin > 0 else "-"
        verdict = "within noise" if c.verdict == "noise" else c.verdict
        rows.append(
            [
                c.subject,
                c.metric,
                _fmt(c.metric, c.model),
                _fmt(c.metric, c.measured),
                _err(c),
                tol,
                margin,
                verdict + (f" ({c.note})" if c.note else ""),
            ]
        )
    return table(["subject", "metric", "model", "measured", "error", "tolerance", "margin", "verdict"], rows)


def _measured_ci(h: Histogram, p: float) -> tuple[float, float]:
    """A distribution-free 95 % interval of the ``p``-th percentile from ``h``'s samples (order statistics: n q ± 1.96 √(n q (1 − q)))."""
    n, q = h.count, p / 100
    half = 1.96 * math.sqrt(n * q * (1 - q))
    return h.percentile(max(0.0, 100 * (n * q - half) / n)), h.percentile(min(100.0, 100 * (n * q + half) / n))


def _hockey_stick(levels: list[Level], rts: list[str], curve: dict[str, Any] | None, out: Path) -> str:
    """Latency against load for every request type: the model (a curve when given, else its levels), the measured points with CIs.

    The curve is the calibrated model at calibration's machine speed; where a
    level's model ran at another speed (measured around or during the level),
    its judged value is marked at the level as well, so that a curve and a
    measured point apart are read as the machine's speed, not the model's.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rts), figsize=(4 * len(rts), 3.4), squeeze=False)
    xs = [lv.fraction for lv in levels]
    for ax, rt in zip(axes[0], rts, strict=False):
        for p, colour in ((50, "tab:blue"), (95, "tab:orange")):
            by_level = [next((c for c in lv.checks if c.subject == rt and c.metric == f"p{p}"), None) for lv in levels]
            judged = [c.model * 1000 if c else math.nan for c in by_level]
            if curve is not None and rt in curve["requests"]:
                ax.plot(curve["fractions"], [v * 1000 for v in curve["requests"][rt][f"p{p}"]], "-", color=colour, label=f"model p{p}")
                if any(lv.speed is not None for lv in levels):
                    ax.plot(xs, judged, "x", color=colour, markersize=6, label=f"model p{p} at the level's machine speed")
            else:
                ax.plot(xs, judged, "-", color=colour, label=f"model p{p}")
            meas, low, high = [], [], []
            for lv in levels:
                h = lv.measured.requests[rt].total_latency
                if h.count:
                    lo, hi = _measured_ci(h, p)
                    m = h.percentile(p)
                    meas.append(m * 1000)
                    low.append(max(0.0, m - lo) * 1000)
                    high.append(max(0.0, hi - m) * 1000)
                else:
                    meas.append(math.nan)
                    low.append(0.0)
                    high.append(0.0)
            ax.errorbar(xs, meas, yerr=[low, high], fmt="o", color=colour, capsize=3, markersize=4, label=f"measured p{p} (95 % CI)")
        ax.set_yscale("log")
        ax.set_title(rt)
        ax.set_xlabel("load (fraction of saturation)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency-vs-load.png", dpi=90)
    plt.close(fig)
    return "latency-vs-load.png"


def _plots(levels: list[Level], out: Path, curve: dict[str, Any] | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    rts = [rt for rt in levels[0].measured.requests if any(lv.measured.requests[rt].total_latency.count for lv in levels)]
    if not rts:
        return names
    names.append(_hockey_stick(levels, rts, curve, out))
    # per-interval series of each level: throughput and p95 of every request type
    for lv in levels:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        m, r = lv.models[0], lv.measured
        t_m = [(m.start + (k + 0.5) * m.interval) for k in range(m.n_intervals)]
        t_r = [(r.start + (k + 0.5) * r.interval) for k in range(r.n_intervals)]
        for i, rt in enumerate(rts):
            colour = f"C{i}"  # one colour per request type: line for the model, dots for the measurement
            axes[0].plot(t_m, [x / m.interval for x in m.requests[rt].ok], "-", color=colour, label=rt)
            axes[0].plot(t_r, [x / r.interval for x in r.requests[rt].ok], "o", color=colour, markersize=3)
            axes[1].plot(t_m, [h.percentile(95) * 1000 if h.count else math.nan for h in m.requests[rt].latency], "-", color=colour)
            axes[1].plot(
                t_r, [h.percentile(95) * 1000 if h.count else math.nan for h in r.requests[rt].latency], "o", color=colour, markersize=3
            )
        axes[1].set_yscale("log")
        axes[0].set_title(f"level {lv.fraction:g}: successful requests/s (line: model, dots: measured)", fontsize=9)
        axes[1].set_title(f"level {lv.fraction:g}: p95 latency, ms (line: model, dots: measured)", fontsize=9)
        for ax in axes:
            ax.set_xlabel("seconds into the run")
            ax.grid(alpha=0.3)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(rts), fontsize=8, frameon=False)
        name = f"series-level-{lv.fraction:g}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def write_report(
    out: Path, scenario: str, levels: list[Level], knee: Knee, meta: dict[str, Any], curve: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write validation.json, validation.html and the plots into ``out``; return the two report paths."""
    out.mkdir(parents=True, exist_ok=True)
    passed = all(lv.passed for lv in levels) and knee.verdict != "fail"
    data = {
        "scenario": scenario,
        "passed": passed,
        "meta": meta,
        "knee": {**knee.__dict__, "verdict": knee.verdict},
        "levels": [
            {
                "fraction": lv.fraction,
                "rate": lv.rate,
                "passed": lv.passed,
                "outside_tolerance": sum(c.verdict in ("noise", "fail") for c in lv.checks),
                "within_noise": sum(c.verdict == "noise" for c in lv.checks),
                "checks": [c.to_dict() for c in lv.checks],
                **({"cpu_drift": lv.cpu_drift} if lv.cpu_drift is not None else {}),
                **({"machine_speed": lv.speed.to_dict()} if lv.speed is not None else {}),
                **({"disk": lv.disk.to_dict()} if lv.disk is not None else {}),
                **({"placed": lv.placed.to_dict()} if lv.placed is not None else {}),
                **({"chance": {"failed": lv.chance}} if lv.chance else {}),
                **(
                    {
                        "given_level_cpu": {
                            "passed": all(c.verdict != "fail" for c in lv.given_cpu),
                            "diagnosis": lv.diagnosis(),
                            "checks": [c.to_dict() for c in lv.given_cpu],
                        }
                    }
                    if lv.given_cpu is not None
                    else {}
                ),
            }
            for lv in levels
        ],
    }
    json_path = out / "validation.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    if curve is not None:
        data["model_curve"] = curve
        json_path.write_text(json.dumps(data, indent=1, default=str))
    images = _plots(levels, out, curve)
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>Validation of {html.escape(scenario)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "pre{font-size:12px;background:#f6f6f6;padding:.6em;overflow-x:auto}.pass{color:#080}.fail{color:#b00}</style>",
        f"<h1>Validation of {html.escape(scenario)}: <span class={'pass' if passed else 'fail'}>{'PASS' if passed else 'FAIL'}</span></h1>",
        "<p>The SimPy model (calibrated) against Locust runs on the reference deployment, one steady load level at a time. "
        "Model figures: counts, rates and utilization from the replication that ran the load test's own arrivals and registrants; "
        "latency percentiles pooled over replications. A check passes within its tolerance and fails outside it by more than its "
        "margin: the 95 % interval of the difference between the model's figure and one run's that the spread of the model's "
        "replications gives (a level is one run of its length, and near the knee its percentiles move by more than the "
        "tolerance from run to run). A check outside its tolerance by less than its margin is marked <i>within noise</i>: "
        "this run cannot tell the model's miss from its own noise; it does not fail the level, and it is counted.</p>",
        f"<pre>{html.escape(json.dumps(meta, indent=1, default=str))}</pre>",
        f"<h2>Saturation (the knee)</h2><p>Predicted bottleneck: <b>{html.escape(knee.resource)}</b>; by the utilization law "
        f"at {knee.arrival_rate:.4g} arrivals/s, "
        f"that is {knee.law if knee.law is not None else knee.predicted:.4g} {html.escape(knee.request)} requests/s"
        + (
            f" (the calibrated rate over the machine's speed, {knee.speed:.3f} x calibration's CPU time, at the level that carried "
            "the most)"
            if knee.speed is not None
            else ""
        )
        + (
            f". The model's own saturation, judged: {knee.predicted:.4g} {html.escape(knee.request)} requests/s at level "
            f"{knee.model_level:g} (past the knee the door turns requests away, so an admitted registration brings less work "
            "after it than the law counts)"
            if knee.model_level is not None
            else ""
        )
        + f". Highest measured: {knee.measured:.4g}/s "
        + (
            "(a level at or past saturation was run). "
            if knee.reached
            else "(no level reached saturation, so the check is that no measurement exceeds the prediction). "
        )
        + f"Verdict: <span class={knee.verdict}>{knee.verdict}</span>.</p>",
    ]
    parts += [f'<img src="{name}" alt="{html.escape(name)}" style="max-width:100%">' for name in images]
    if curve is not None and any(lv.speed is not None for lv in levels):
        parts.append(
            "<p>The model's curve is drawn at calibration's machine speed; each level's model ran at the machine's speed "
            "measured for that level (the crosses), which is what the level's checks judge.</p>"
        )
    for lv in levels:
        parts.append(
            f"<h2>Level {lv.fraction:g} ({lv.rate:.4g} arrivals/s): <span "
            f"class={'pass' if lv.passed else 'fail'}>{'pass' if lv.passed else 'FAIL'}</span></h2>"
        )
        if (why := lv.diagnosis()) is not None:
            parts.append(f"<p>Machine: {html.escape(why)}.</p>")
        if (noisy := lv.within_noise()) is not None:
            parts.append(f"<p>Within noise: {html.escape(noisy)}.</p>")
        if (noise := lv.by_chance()) is not None:
            parts.append(f"<p>By chance: {html.escape(noise)}.</p>")
        parts.append(f"<pre>{html.escape(verdict_table(lv.checks))}</pre>")
    parts.append("</html>")
    html_path = out / "validation.html"
    html_path.write_text("\n".join(parts))
    return html_path, json_path
