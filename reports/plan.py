"""The capacity plan's report: one self-contained HTML file (plots inline), Markdown and JSON beside it.

Tables are pandas DataFrames built from the plan's figures; plots are
matplotlib PNGs embedded as data URIs, so the HTML opens offline and prints.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.queueing import mmc
from models.scenario import EMAIL, REGISTRY
from models.sizing import Candidate, PlanOutcome, cost, server_hours
from models.units import format_duration

__all__ = ["write_plan_report", "tables"]


def _money(x: float, currency: str) -> str:
    return f"{x:,.2f} {currency}"


def _servers_text(counts: tuple[int, ...]) -> str:
    return f"{min(counts)}–{max(counts)}" if min(counts) != max(counts) else f"{counts[0]}"


def tables(o: PlanOutcome) -> dict[str, pd.DataFrame]:
    """Every table of the report, by name."""
    s = o.scenario
    cur = s.costs.currency
    prices = s.costs.per_unit_hour
    start, end = s.window
    out: dict[str, pd.DataFrame] = {}
    rec, static = o.recommended, o.static()
    if rec is not None and static is not None:
        sh, st = server_hours(rec, start, end), server_hours(static, start, end)
        out["sizing"] = pd.DataFrame(
            [
                {
                    "station": k,
                    "static servers": static.servers[k][0],
                    "schedule servers": _servers_text(rec.servers[k]),
                    "static server-hours": round(st[k], 1),
                    "schedule server-hours": round(sh[k], 1),
                    f"static cost ({cur})": round(st[k] * prices.get(k, 0.0), 2),
                    f"schedule cost ({cur})": round(sh[k] * prices.get(k, 0.0), 2),
                }
                for k in rec.servers
            ]
        )
        if rec.step > 0:
            rows = []
            for i in range(max(len(v) for v in rec.servers.values())):
                rows.append({"from": format_duration(start + i * rec.step), **{k: rec.at(k, i) for k in rec.servers}})
            out["schedule"] = pd.DataFrame(rows)
    if o.confirmed is not None:
        out["slos"] = pd.DataFrame(
            [
                {
                    "objective": v.slo.label,
                    "mean": _slo_value(v.slo, v.mean),
                    "upper 95 %": _slo_value(v.slo, v.upper),
                    "replications": len(v.values),
                    "verdict": "met" if v.met else "MISSED",
                }
                for v in o.confirmed.verdicts
            ]
        )
    if o.screen.backlogs:
        out["backlogs"] = pd.DataFrame([_backlog_row(o, name) for name in o.screen.backlogs])
    out["headroom"] = pd.DataFrame([{"resource": r, "saturates at arrivals x": round(m, 2), "capacity": why} for r, m, why in o.headroom])
    out["whatifs"] = pd.DataFrame(
        [
            {
                "what if": w.label,
                **{f"{k} (static)": v for k, v in w.static.items()},
                f"static cost ({cur})": round(w.static_cost, 2),
                f"schedule cost ({cur})": round(w.schedule_cost, 2),
                "SLOs (screen)": "all met"
                if all(ok for _, ok, _ in w.slos)
                else "; ".join(f"{lab}: {why}" for lab, ok, why in w.slos if not ok),
            }
            for w in o.whatifs
        ]
    )
    out["rounds"] = pd.DataFrame(
        [
            {
                "round": i + 1,
                "tried": r.what,
                f"cost ({cur})": round(_cost(o, r.judged.candidate), 2),
                "peak servers": ", ".join(f"{k} {v}" for k, v in r.judged.candidate.peak().items()),
                "result": "every SLO met" if r.judged.met else "missed " + ", ".join(v.slo.label for v in r.judged.verdicts if not v.met),
                "seconds": round(r.seconds, 1),
            }
            for i, r in enumerate(o.rounds)
        ]
    )
    funnel = _funnel(o)
    if funnel is not None:
        out["funnel"] = funnel
    return out


def _cost(o: PlanOutcome, candidate: Candidate) -> float:
    return cost(candidate, o.base)


def _slo_value(slo: Any, v: float) -> str:
    if math.isnan(v):
        return "-"
    if slo.below is not None or slo.backlog_drained is not None or slo.wait_below is not None:
        return format_duration(v) if math.isfinite(v) else "never"
    return f"{v:.3%}"


def _backlog_row(o: PlanOutcome, name: str) -> dict[str, Any]:
    b = o.screen.backlogs[name]
    slo = next((x for x in o.base.slos if x.backlog_drained is not None), None)
    from models.screen import rate_to_drain

    needed = rate_to_drain(b.inflow, b.dt, slo.backlog_drained) if slo is not None and slo.backlog_drained else math.nan
    row: dict[str, Any] = {
        "backlog": "email outbox" if name == EMAIL else "NIK checks waiting on the registry's rate limit",
        "rate (planned)": f"{float(b.rate.min()):.4g}/s"
        + ("" if float(b.rate.min()) == float(b.rate.max()) else f" to {float(b.rate.max()):.4g}/s"),
        "peak backlog": f"{b.peak:,.0f}",
        "drained at": format_duration(b.drained_at) if math.isfinite(b.drained_at) else "not within the horizon",
        "rate that drains it in time": f"{needed:.4g}/s" if math.isfinite(needed) else "-",
    }
    sim = _simulated_backlog(o, name)
    if sim is not None:
        row["simulated peak queue"] = f"{float(sim.max()):,.0f}"
    registry = o.scenario.system.registry
    if name == REGISTRY and registry is not None:
        day = min(len(b.inflow), int(86400 / b.dt))
        calls = float(b.inflow[:day].sum() * b.dt)
        row["daily quota needed"] = (
            f"{calls:,.0f} (configured {registry.daily_quota:,})" if registry.daily_quota else f"{calls:,.0f} (no quota set)"
        )
    return row


def _simulated_backlog(o: PlanOutcome, name: str) -> np.ndarray | None:
    if o.confirmed is None or not o.confirmed.results or name != EMAIL:
        return None
    series = [r.stations[name].queue_mean for r in o.confirmed.results if name in r.stations]
    return np.mean(np.array(series), axis=0) if series else None


def _funnel(o: PlanOutcome) -> pd.DataFrame | None:
    if o.confirmed is None or not o.confirmed.results:
        return None
    results = o.confirmed.results
    rows = []
    reported = o.base.reported
    for step in o.base.journey:
        completed = sum(sum(r.steps[step.name].completed) for r in results) / len(results)
        row: dict[str, Any] = {"step": step.name, "model (completed)": round(completed)}
        if reported is not None and step.name in reported.counts:
            row[f"reported at {format_duration(reported.at)}"] = reported.counts[step.name]
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns[1:]:
        df[col] = df[col].astype("Int64")  # counts: integers, blank where a step has no reported figure
    return df


# --- plots ---------------------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(o: PlanOutcome) -> dict[str, str]:
    """Each plot as base64 PNG, by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    sc = o.screen
    hours = (sc.start + np.arange(sc.n) * sc.dt) / 3600
    rec, static = o.recommended, o.static()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True)
    ax1.plot(hours, sc.arrivals * 60, color="tab:blue")
    ax1.set_ylabel("arrivals / min")
    ax1.set_title("Arrivals and the recommended capacity")
    if rec is not None and static is not None:
        for i, k in enumerate(rec.servers):
            colour = f"C{i + 1}"
            ys = [rec.at(k, int(j * sc.dt // rec.step) if rec.step > 0 else 0) for j in range(sc.n)]
            ax2.step(hours, ys, where="post", color=colour, label=f"{k}: schedule")
            ax2.axhline(static.servers[k][0], color=colour, linestyle="--", linewidth=0.8, label=f"{k}: static")
        ax2.legend(fontsize=7, ncol=3)
    ax2.set_ylabel("servers")
    ax2.set_xlabel("hours from opening")
    out["Arrivals and the recommended capacity (schedule: solid; static: dashed)"] = _png(fig)

    if o.confirmed is not None and o.confirmed.results:
        r0 = o.confirmed.results[0]
        fig, ax = plt.subplots(figsize=(9, 3.4))
        xs = (r0.start + np.arange(r0.n_intervals) * r0.interval) / 3600
        for name in r0.stations:
            util = np.nanmean(np.array([r.stations[name].utilization() for r in o.confirmed.results]), axis=0)
            ax.plot(xs, util * 100, label=name)
        ax.set_ylabel("utilization %")
        ax.set_xlabel("hours from opening")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=7, ncol=4)
        ax.set_title("Utilization per station with the recommended schedule (simulated)")
        out["Utilization per station over the day"] = _png(fig)

    if sc.backlogs:
        fig, ax = plt.subplots(figsize=(9, 3.4))
        for i, (name, b) in enumerate(sc.backlogs.items()):
            label = "email outbox" if name == EMAIL else "NIK checks waiting (registry rate limit)"
            ax.plot(hours, b.backlog, color=f"C{i}", label=f"{label} (screen)")
            sim = _simulated_backlog(o, name)
            if sim is not None:
                ax.plot(hours[: len(sim)], sim, color=f"C{i}", linestyle=":", label=f"{label} (simulated)")
            if math.isfinite(b.drained_at) and b.drained_at > 0:
                ax.axvline((sc.start + b.drained_at) / 3600, color=f"C{i}", linestyle="--", linewidth=0.8)
        ax.set_ylabel("waiting")
        ax.set_xlabel("hours from opening (dashed: drained)")
        ax.legend(fontsize=7)
        ax.set_title("Backlogs over the day")
        out["Backlogs over the day, drain times marked"] = _png(fig)

    curve = _hockey(o)
    if curve:
        fig, ax = plt.subplots(figsize=(9, 3.6))
        for rt, (xs_, ys_) in curve.items():
            ax.plot(xs_, np.array(ys_) * 1000, label=rt)
        top = o.provenance.get("validated_up_to")
        if top:
            ax.axvspan(0, top, color="tab:green", alpha=0.12, label="validated load range")
        ax.axvline(float(sc.arrivals.max()), color="grey", linestyle="--", linewidth=0.8, label="the scenario's peak")
        ax.set_xlabel("arrivals / s")
        ax.set_ylabel("mean latency at the peak, ms")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=3)
        ax.set_title("Latency against load with the static size (M/M/c per station)")
        out["Latency against load (the hockey stick)"] = _png(fig)

    if o.whatifs:
        loads = [w for w in o.whatifs if w.label.startswith("arrivals")]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot([w.load for w in loads], [w.static_cost for w in loads], marker="o", label="static")
        ax.plot([w.load for w in loads], [w.schedule_cost for w in loads], marker="s", label="schedule")
        ax.set_xlabel("arrivals x")
        ax.set_ylabel(f"cost ({o.base.costs.currency})")
        ax.set_title("Cost against load (screen)")
        ax.legend(fontsize=7)
        out["Cost against load multiple (what-if, screen)"] = _png(fig)

    funnel = _funnel(o)
    if funnel is not None:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        x = np.arange(len(funnel))
        ax.bar(x - 0.2, funnel["model (completed)"], width=0.4, label="model")
        rep = [c for c in funnel.columns if c.startswith("reported")]
        if rep:
            ax.bar(x + 0.2, funnel[rep[0]].fillna(0), width=0.4, label=rep[0])
        ax.set_xticks(x, funnel["step"], fontsize=8)
        ax.legend(fontsize=7)
        ax.set_title("The funnel: model beside the reported figures")
        out["The funnel"] = _png(fig)
    return out


def _hockey(o: PlanOutcome) -> dict[str, tuple[list[float], list[float]]]:
    """Per request type: mean latency at the peak interval against arrivals/s, with the static size (M/M/c at every station)."""
    static = o.static()
    if static is None:
        return {}
    sc = o.screen
    j = int(np.argmax(sc.arrivals))
    peak = float(sc.arrivals[j])
    if peak <= 0:
        return {}
    s = o.scenario
    lam = {name: sum(sc.step_rates[st.name][j] for st in s.journey if name in st.stations) for name in sc.offered}
    out: dict[str, tuple[list[float], list[float]]] = {}
    multiples = np.linspace(0.05, 2.0, 80)
    for step in s.journey:
        rt = step.request_type
        if rt in out:
            continue
        xs, ys = [], []
        for m in multiples:
            total = 0.0
            for name in step.stations:
                if name == REGISTRY:
                    total += s.system.registry.latency.mean if s.system.registry else 0.0
                    continue
                dist = s.system.stations[name].service_for(rt)
                if dist is None or lam.get(name, 0.0) <= 0:
                    continue
                mean = float(sc.offered[name][j] / lam[name])
                q = mmc(lam[name] * m, 1.0 / mean, static.servers[name][0])
                total += (q.wq if math.isfinite(q.wq) else math.nan) + dist.mean
            xs.append(peak * m)
            ys.append(total)
        out[rt] = (xs, ys)
    return out


# --- writing -------------------------------------------------------------------------------------------------------


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join("" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in row) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join(lines)


def _summary(o: PlanOutcome) -> list[str]:
    cur = o.base.costs.currency
    if not o.feasible:
        return ["**No capacity within the plan's bounds meets every SLO.**"] + [f"- {why}" for why in o.infeasible]
    rec, static = o.recommended, o.static()
    assert rec is not None and static is not None and o.confirmed is not None
    c_static, c_sched = _cost(o, static), _cost(o, rec)
    saving = (1 - c_sched / c_static) if c_static > 0 else 0.0
    reps = len(o.confirmed.results)
    lines = [
        f"**Recommended:** {'a capacity schedule' if rec.step > 0 else 'a static size'} costing {_money(c_sched, cur)} "
        f"over {format_duration(o.base.window[1] - o.base.window[0])}"
        + (f"; a static size for the peak costs {_money(c_static, cur)} (elastic capacity saves {saving:.0%})." if rec.step > 0 else "."),
        f"Confirmed by the SimPy model: {reps} replications, every SLO met at the upper end of its 95 % confidence interval "
        f"({len(o.rounds)} simulation round(s) in all)."
        + ("  The static size has at least the schedule's servers at every moment, so it meets them too." if rec.step > 0 else ""),
    ]
    if rec.email_rate is not None:
        lines.append(f"Email send rate: {rec.email_rate:.4g}/s from the opening.")
    if rec.rate_limit is not None:
        lines.append(f"Registry rate limit to ask for: {rec.rate_limit:.4g}/s from the opening.")
    if o.base.plan.descend:
        lines.append(
            "Cheapest: one server fewer at the costliest stations was tried by simulation until an SLO was missed (see the rounds)."
        )
    else:
        lines.append("Not checked for a cheaper size by simulation (plan.descend: false): the screen's size, confirmed.")
    return lines


def write_plan_report(o: PlanOutcome, out: Path) -> dict[str, Path]:
    """Write plan.html, plan.md and plan.json into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    tabs = tables(o)
    images = plots(o)
    prov = o.provenance
    title = f"Capacity plan for {o.base.name}"
    data = {
        "scenario": o.base.name,
        "feasible": o.feasible,
        "infeasible": o.infeasible,
        "summary": _summary(o),
        "provenance": prov,
        "seconds": o.seconds,
        "disagreements": o.disagreements,
        "recommended": None
        if o.recommended is None
        else {
            "step": o.recommended.step,
            "servers": o.recommended.servers,
            "email_rate": o.recommended.email_rate,
            "rate_limit": o.recommended.rate_limit,
        },
        "tables": {name: json.loads(df.to_json(orient="records")) for name, df in tabs.items()},
    }
    paths = {"json": out / "plan.json", "md": out / "plan.md", "html": out / "plan.html"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    titles = {
        "sizing": "Sizing: static and hourly schedule",
        "schedule": "The hourly schedule (servers from each hour)",
        "slos": "SLOs with the recommended schedule (simulated)",
        "backlogs": "Backlogs (screen; the outbox also simulated)",
        "headroom": "Bottleneck order and headroom with the static size",
        "whatifs": "What if (screen only, not simulated)",
        "funnel": "The funnel",
        "rounds": "Simulation rounds",
    }
    notes = [f"- {d}" for d in o.disagreements] or [
        "- the screen and the simulation agree within 10 % on every station's utilization and every step"
    ]
    extrapolated = prov.get("extrapolated", "")
    md = [f"# {title}", "", *_summary(o), ""]
    md += ["## Provenance", "", *[f"- {k}: {v}" for k, v in prov.items() if v], ""]
    for name, df in tabs.items():
        md += [f"## {titles.get(name, name)}", "", _markdown(df), ""]
    md += ["## Screen against simulation", "", *notes, ""]
    paths["md"].write_text("\n".join(md))
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f2f2f2}td:first-child{text-align:left}.warn{background:#fff4d6;padding:.5em;border-left:4px solid #e0a000}"
        "img{max-width:100%}@media print{img{page-break-inside:avoid}}</style>",
        f"<h1>{html.escape(title)}</h1>",
        *[f"<p>{html.escape(line).replace('**', '')}</p>" for line in _summary(o)],
    ]
    if extrapolated and not extrapolated.startswith("no"):
        parts.append(
            f"<p class=warn>Extrapolated: {html.escape(extrapolated)}.  Every recommendation here lies beyond what a validation backs.</p>"
        )
    first = [name for name in ("sizing", "slos") if name in tabs]

    def table_html(name: str) -> str:
        return f"<h2>{html.escape(titles.get(name, name))}</h2>" + tabs[name].to_html(
            index=False, border=0, classes=f"table-{name}", na_rep=""
        )

    parts += [table_html(name) for name in first]  # what a planner reads first, then the pictures, then the detail
    parts.append("<h2>Plots</h2>")
    for caption, b64 in images.items():
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' "
            f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += [table_html(name) for name in tabs if name not in first]
    parts.append("<h2>Screen against simulation</h2><ul>" + "".join(f"<li>{html.escape(n[2:])}</li>" for n in notes) + "</ul>")
    parts.append(
        "<h2>Provenance</h2><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in prov.items() if v) + "</ul>"
    )
    parts.append("</html>")
    paths["html"].write_text("\n".join(parts))
    return paths
