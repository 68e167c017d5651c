"""The regression run's outputs: JUnit XML for CI, a Markdown summary (fit for ``$GITHUB_STEP_SUMMARY``), JSON, and HTML.

JUnit: one ``testsuite`` per kind (thresholds, SLOs, the comparison with the
baseline), one ``testcase`` per threshold, SLO and compared metric; a failed one
carries a ``failure`` whose message says what moved, by how much, and against
which noise band.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from models.regression import Comparison
from models.results import RunResult

__all__ = ["junit_xml", "markdown", "write_regress_report"]


def _cases(o: Any) -> dict[str, list[tuple[str, str | None, str]]]:
    """Per suite: (test name, failure message or None, details)."""
    thresholds = [(v.threshold.label, None if v.passed else f"{v.threshold.label}: measured {v.shown}", v.shown) for v in o.thresholds]
    slos = [(label, None if ok else f"{label}: measured {value:.4g}", f"{value:.4g}") for label, value, ok in o.slos]
    compared = [(c.label, c.describe() if c.regressed else None, c.describe()) for c in o.comparisons]
    return {"thresholds": thresholds, "slos": slos, "baseline comparison": compared}


def _mode(o: Any) -> str:
    """How the run was compared, in a sentence."""
    against = o.against
    if against:
        return (
            f"A/B in one run: every arrival served by this target and by {against} (the build compared with), "
            "interleaved; each metric compared interval by interval (sign-flip test on the paired differences)"
        )
    return f"against the baseline of {len(o.baseline.runs)} run(s) recorded {o.baseline.created or '(undated)'}"


def _base(o: Any) -> str:
    return "against" if o.against else "baseline"


def junit_xml(o: Any) -> str:
    """The outcome as JUnit XML (the schema CI systems read: testsuites > testsuite > testcase [> failure])."""
    cases = _cases(o)
    root = ET.Element("testsuites", name=f"surgecap regress {o.scenario.name}")
    total = failures = 0
    for suite_name, rows in cases.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(rows)),
            failures=str(sum(1 for _, f, _ in rows if f)),
            errors="0",
            skipped="0",
            time="0",
        )
        for name, failure, details in rows:
            case = ET.SubElement(
                suite, "testcase", classname=f"surgecap.{o.scenario.name}.{suite_name.replace(' ', '_')}", name=name, time="0"
            )
            if failure:
                ET.SubElement(
                    case, "failure", message=failure, type="regression" if suite_name == "baseline comparison" else "threshold"
                ).text = details
            else:
                ET.SubElement(case, "system-out").text = details
        total += len(rows)
        failures += sum(1 for _, f, _ in rows if f)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def markdown(o: Any) -> str:
    """A summary for a CI job's page: the verdict, what failed, and the comparison table."""
    verdict = "passed" if o.passed else "FAILED"
    lines = [f"## surgecap regress: {o.scenario.name} {verdict}", "", f"Compared {_mode(o)}.", ""]
    for w in o.warnings:
        lines.append(f"> warning: {w}")
    if o.warnings:
        lines.append("")
    failed = [v.threshold.label for v in o.thresholds if not v.passed] + [label for label, _, ok in o.slos if not ok]
    lines += [f"- threshold or SLO missed: {x}" for x in failed]
    lines += [f"- regression: {c.describe()}" for c in o.regressions]
    if not failed and not o.regressions:
        than = "the build compared with" if o.against else "the baseline"
        lines.append(f"- every threshold and SLO met; no metric worse than {than} beyond its minimum effect and noise")
    lines += ["", f"| request | metric | {_base(o)} | now | change | p | verdict |", "|---|---|---|---|---|---|---|"]
    for c in o.comparisons:
        lines.append(
            f"| {c.request} | {c.metric} | {_fmt(c, c.baseline)} | {_fmt(c, c.current)} | {_change(c)} | {c.p_value:.3g} | "
            f"{'REGRESSION' if c.regressed else 'ok'} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(c: Comparison, v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1000:.1f}ms" if c.metric.startswith("p") else f"{v:.2%}"


def _change(c: Comparison) -> str:
    return f"{c.effect * 100:+.2f} pt" if c.metric == "error_rate" else f"{c.effect:+.1%}"


def _p95_series(r: RunResult, rt: str) -> list[float]:
    s = r.requests.get(rt)
    if s is None:
        return []
    return [h.percentile(95) if h.count else math.nan for h in s.latency]


def _plot(o: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rts = [rt for rt in o.result.requests if any(sum(r.requests[rt].started) for r in o.baseline.runs if rt in r.requests)]
    fig, axes = plt.subplots(1, max(1, len(rts)), figsize=(3.6 * max(1, len(rts)), 3.2), squeeze=False)
    for ax, rt in zip(axes[0], rts, strict=False):
        for k, run in enumerate(o.baseline.runs):
            ys = _p95_series(run, rt)
            ax.plot(np.arange(len(ys)) * run.interval, np.array(ys) * 1000, color="grey", alpha=0.6, label=_base(o) if k == 0 else None)
        ys = _p95_series(o.result, rt)
        ax.plot(np.arange(len(ys)) * o.result.interval, np.array(ys) * 1000, color="tab:red", label="this run")
        ax.set_title(f"{rt}: p95 per interval, ms", fontsize=9)
        ax.set_xlabel("seconds")
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_regress_report(o: Any, out: Path, junit: Path | None = None, summary: Path | None = None) -> dict[str, Path]:
    """regress.json, regress.md, regress.html and junit.xml in ``out`` (and the JUnit and summary where asked)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "regress.json", "md": out / "regress.md", "html": out / "regress.html", "junit": junit or out / "junit.xml"}
    data = {
        "scenario": o.scenario.name,
        "passed": o.passed,
        "mode": "ab" if o.against else "baseline",
        "against": o.against,
        "warnings": o.warnings,
        "environment": {"baseline": o.baseline.environment, "now": o.environment},
        "thresholds": [{"threshold": v.threshold.label, "value": v.value, "passed": v.passed} for v in o.thresholds],
        "slos": [{"slo": label, "value": value, "met": ok} for label, value, ok in o.slos],
        "comparisons": [{**c.__dict__, "regressed": c.regressed} for c in o.comparisons],
    }
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    md = markdown(o)
    paths["md"].write_text(md)
    if summary is not None:
        with open(summary, "a", encoding="utf-8") as f:  # $GITHUB_STEP_SUMMARY is appended to
            f.write(md)
        paths["summary"] = summary
    paths["junit"].parent.mkdir(parents=True, exist_ok=True)
    paths["junit"].write_text(junit_xml(o))
    rows = "".join(
        f"<tr><td>{html.escape(c.request)}</td><td>{c.metric}</td><td>{_fmt(c, c.baseline)}</td><td>{_fmt(c, c.current)}</td>"
        f"<td>{_change(c)}</td><td>{c.p_value:.3g}</td><td "
        f"class={'fail' if c.regressed else 'pass'}>{'REGRESSION' if c.regressed else 'ok'}</td></tr>"
        for c in o.comparisons
    )
    paths["html"].write_text(
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>Regression run of {html.escape(o.scenario.name)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 7px}.pass{color:#080}.fail{color:#b00}img{max-width:100%}</style>"
        f"<h1>Regression run of {html.escape(o.scenario.name)}: <span "
        f"class={'pass' if o.passed else 'fail'}>{'passed' if o.passed else 'FAILED'}</span></h1>"
        + "".join(f"<p>warning: {html.escape(w)}</p>" for w in o.warnings)
        + f"<pre>{html.escape(md)}</pre>"
        + "<table class=table-comparisons><tr>"
        + "".join(f"<th>{h}</th>" for h in ("request", "metric", _base(o), "now", "change", "p", "verdict"))
        + "</tr>"
        + rows
        + "</table>"
        + f"<h2>Latency over time, the {_base(o)} beside this run</h2><img alt='p95 per interval' "
        f"src='data:image/png;base64,{_plot(o)}'>" + "</html>"
    )
    return paths
