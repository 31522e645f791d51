"""The report of a chaos run: one self-contained HTML page and a short text summary.

Why server-side SVG and no JavaScript library: the page must open anywhere (an air-gapped laptop,
a CI artifact, a closed network), so everything is inline: CSS, and one SVG per service drawing a
key metric, the anomaly score with its threshold, the fault windows (shaded from injection to
recovery), and the engine's actions and approvals as labelled markers. Below, the table of time
to detect and time to recover per fault. Element ids (``timeline``, ``faults-table``) are stable
so a headless browser test can find them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.chaos.results import RunResult

KEY_METRICS = {
    "gateway": ("error_rate", "latency_p99_ms"),
    "inference-a": ("memory_util", "error_rate", "latency_p99_ms"),
    "inference-b": ("memory_util", "error_rate", "latency_p99_ms"),
    "vector-db": ("retrieval_precision", "error_rate", "latency_p99_ms"),
    "feature-store": ("error_rate", "latency_p99_ms"),
    "ingestion": ("queue_depth", "error_rate"),
}
FAULT_METRIC = {
    "memory_leak": "memory_util",
    "latency_creep": "latency_p99_ms",
    "stale_index": "retrieval_precision",
    "bad_deploy": "error_rate",
    "dependency_outage": "error_rate",
}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 960, 150, 56, 12, 14, 22
COLORS = {
    "metric": "#2563eb",
    "score": "#d97706",
    "fault": "#fecaca",
    "action": "#059669",
    "approval": "#7c3aed",
    "anomaly": "#dc2626",
}


def fmt_duration(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 60:.1f} min" if abs(v) >= 120 else f"{v:.0f} s"


def _clock(ts: float | None, t0: float) -> str:
    if ts is None:
        return "-"
    d = ts - t0
    sign = "-" if d < 0 else "+"
    d = abs(d)
    return f"T{sign}{int(d // 3600):d}:{int(d % 3600 // 60):02d}:{int(d % 60):02d}"


def render_text(result: RunResult) -> str:
    """A few lines a person reads in a terminal or a chat message."""
    t0 = result.record["started"]
    lines = [f"{result.name}: {result.verdict.upper()} - {result.title}"]
    for f in result.faults:
        acts = (
            ", ".join(f"{a['action']}@{a['target']}({a['verification'] or a['status']})" for a in f.actions)
            or "none"
        )
        apps = ", ".join(f"{a['action']}@{a['target']}:{a['status']}" for a in f.approvals) or "none"
        lines.append(
            f"  {f.name:<14} {f.kind:<18} {f.service:<13} injected {_clock(f.injected, t0)}  "
            f"TTD {fmt_duration(f.ttd_s):>8}  TTR {fmt_duration(f.ttr_s):>8}  "
            f"actions: {acts}  approvals: {apps}"
        )
    if result.unexpected:
        lines.append(
            "  unexpected actions: " + ", ".join(f"{a['action']}@{a['target']}" for a in result.unexpected)
        )
    for r in result.reasons:
        lines.append(f"  - {r}")
    return "\n".join(lines)


def element(tag: str, text: str | None = None, **attrs: Any) -> str:
    """One SVG/HTML element; ``class_`` -> ``class``, ``stroke_width`` -> ``stroke-width``; escaped."""
    rendered = " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items()
    )
    if text is None:
        return f"<{tag} {rendered}/>"
    return f"<{tag} {rendered}>{html.escape(text)}</{tag}>"


class _Lane:
    """Coordinates of one service's timeline: platform time on x, a value range on y."""

    def __init__(self, x0: float, x1: float) -> None:
        self.x0, self.x1 = x0, max(x1, x0 + 1.0)

    def x(self, t: float) -> float:
        return PAD_L + (t - self.x0) / (self.x1 - self.x0) * (W - PAD_L - PAD_R)

    @staticmethod
    def y(v: float, lo: float, hi: float) -> float:
        return PAD_T + (1 - (v - lo) / ((hi - lo) or 1.0)) * (H - PAD_T - PAD_B)

    def path(self, points: list[tuple[float, float]], lo: float, hi: float) -> str:
        step = max(1, len(points) // 600)  # a path of at most ~600 vertices per lane
        return " ".join(
            f"{'M' if i == 0 else 'L'}{self.x(t):.1f},{self.y(v, lo, hi):.1f}"
            for i, (t, v) in enumerate(points[::step])
        )


def _svg(service: str, result: RunResult, x0: float, x1: float) -> str:
    rec = result.record
    lane = _Lane(x0, x1)
    inner = H - PAD_T - PAD_B
    series: dict[str, list[list[float]]] = rec.get("series", {})
    parts = [
        element(
            "rect", x=PAD_L, y=PAD_T, width=W - PAD_L - PAD_R, height=inner, fill="#fafafa", stroke="#e5e7eb"
        )
    ]
    for f in (f for f in result.faults if f.service == service):
        left, right = lane.x(f.injected), lane.x(f.recovered or x1)
        width = max(2.0, right - left)
        parts.append(
            f'<rect class="fault" x="{left:.1f}" y="{PAD_T}" width="{width:.1f}" height="{inner}" '
            f'fill="{COLORS["fault"]}" opacity="0.7"><title>{html.escape(f.name)}: {f.kind}</title></rect>'
        )
    own = [FAULT_METRIC[f.kind] for f in result.faults if f.service == service]  # show the fault's signal
    metric = next((m for m in [*own, *KEY_METRICS.get(service, ())] if f"{service}|{m}" in series), None)
    points = [(float(t), float(v)) for t, v in series.get(f"{service}|{metric}", []) if x0 <= t <= x1]
    if metric and points:
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
        d = lane.path(points, lo - pad, hi + pad)
        parts.append(
            element("path", class_="metric", d=d, fill="none", stroke=COLORS["metric"], stroke_width=1.2)
        )
        parts.append(element("text", metric, x=4, y=PAD_T + 10, font_size=10, fill=COLORS["metric"]))
        parts.append(element("text", f"{hi:.3g}", x=4, y=PAD_T + 22, font_size=9, fill="#6b7280"))
        parts.append(element("text", f"{lo:.3g}", x=4, y=H - PAD_B, font_size=9, fill="#6b7280"))
    scores = [(float(t), float(v)) for t, v in rec.get("scores", {}).get(service, []) if x0 <= t <= x1]
    if scores:
        d = lane.path(scores, 0.0, 1.0)
        parts.append(
            element("path", class_="score", d=d, fill="none", stroke=COLORS["score"], stroke_dasharray="3,2")
        )
        y = round(lane.y(float(rec.get("threshold", 1.0)), 0.0, 1.0), 1)
        parts.append(
            element("line", x1=PAD_L, x2=W - PAD_R, y1=y, y2=y, stroke=COLORS["score"], stroke_width=0.5)
        )
    for n in rec["notes"]:
        if n["kind"] == "anomaly" and n.get("service") == service and x0 <= n["ts"] <= x1:
            parts.append(
                f'<circle class="anomaly" cx="{lane.x(n["ts"]):.1f}" cy="{PAD_T + 4}" r="2.5" '
                f'fill="{COLORS["anomaly"]}"><title>anomaly, score {n["score"]:.3f}</title></circle>'
            )
    for a in (a for f in result.faults for a in f.actions):
        _action(parts, lane, a, service)
    for a in result.unexpected:
        _action(parts, lane, a, service, unexpected=True)
    for a in result.approvals:
        if a["target"] == service and a["asked"] is not None:
            x, yb = lane.x(a["asked"]), H - PAD_B - 4
            title = f"approval for {a['action']}: {a['status']}" + (
                f" by {a['approver']}" if a["approver"] else ""
            )
            diamond = f"M{x:.1f},{yb - 6} l5,6 l-5,6 l-5,-6 z"
            parts.append(
                f'<path class="approval" d="{diamond}" fill="{COLORS["approval"]}">'
                f"<title>{html.escape(title)}</title></path>"
            )
            parts.append(
                element(
                    "text",
                    f"approval {a['status']}",
                    x=round(x + 7, 1),
                    y=yb,
                    font_size=9,
                    fill=COLORS["approval"],
                )
            )
    for i in range(5):
        t = x0 + (x1 - x0) * i / 4
        label = _clock(t, rec["started"])
        parts.append(
            element(
                "text",
                label,
                x=round(lane.x(t), 1),
                y=H - 6,
                font_size=9,
                text_anchor="middle",
                fill="#6b7280",
            )
        )
    label = html.escape(f"timeline of {service}")
    head = f'<svg class="lane" data-service="{html.escape(service)}" viewBox="0 0 {W} {H}" width="100%"'
    return f'{head} role="img" aria-label="{label}">{"".join(parts)}</svg>'


def _action(
    parts: list[str], lane: _Lane, a: dict[str, Any], service: str, *, unexpected: bool = False
) -> None:
    if a["target"] != service or a["executed"] is None:
        return
    x = round(lane.x(a["executed"]), 1)
    color = "#b91c1c" if unexpected else COLORS["action"]
    label = f"{a['action']} ({a['verification'] or a['status']})" + (" UNEXPECTED" if unexpected else "")
    parts.append(
        f'<line class="action" x1="{x}" x2="{x}" y1="{PAD_T}" y2="{H - PAD_B}" stroke="{color}" '
        f'stroke-width="2"><title>{html.escape(label)}</title></line>'
    )
    parts.append(element("text", label, x=x + 3, y=PAD_T + 22, font_size=10, fill=color))


class Raw(str):
    """A table cell that is already HTML (a link); every other cell is escaped."""


def html_table(headers: Iterable[str], rows: Iterable[Iterable[Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    cell = lambda c: c if isinstance(c, Raw) else html.escape(str(c))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


FAULT_COLUMNS = [
    "fault",
    "kind",
    "service",
    "injected",
    "TTD",
    "TTR",
    "actions (verification)",
    "approvals",
    "expected",
]
OVERVIEW_COLUMNS = ["run", "verdict", "faults", "mean TTD", "mean TTR", "actions", "unexpected", "approvals"]
LEGEND = (
    f'<p class="legend"><span style="color:{COLORS["metric"]}">metric</span> · '
    f'<span style="color:{COLORS["score"]}">anomaly score (dashed) and threshold</span> · '
    f'<span style="color:{COLORS["anomaly"]}">anomaly events</span> · '
    f'<span style="background:{COLORS["fault"]}">fault, injection to recovery</span> · '
    f'<span style="color:{COLORS["action"]}">actions</span> · '
    f'<span style="color:{COLORS["approval"]}">approvals</span></p>'
)
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111827;max-width:1100px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;font-size:13px}
th{background:#f3f4f6} .verdict.passed{color:#047857} .verdict.failed,.verdict.aborted{color:#b91c1c}
.lane-row h3{margin:10px 0 0;font-size:13px} .legend span{margin-right:4px}
section.run{border-top:2px solid #e5e7eb;margin-top:24px}
"""
SELF_CHECK = """
// Self-check once laid out: how many timeline lanes have a drawn size, how many table rows exist.
// Headless tests read these attributes back; people can ignore them.
window.addEventListener("load", function () {
  var lanes = Array.prototype.filter.call(document.querySelectorAll("svg.lane"), function (svg) {
    var box = svg.getBoundingClientRect();
    return box.width > 100 && box.height > 20 && svg.querySelector("path.metric") !== null;
  });
  var rows = document.querySelectorAll("#faults-table tbody tr, [id^='faults-table-'] tbody tr");
  document.body.setAttribute("data-lanes-rendered", String(lanes.length));
  document.body.setAttribute("data-table-rows", String(rows.length));
});
"""


def _fault_row(f: Any, t0: float) -> list[str]:
    actions = "; ".join(
        f"{a['action']} on {a['target']} -> {a['verification'] or a['status']}" for a in f.actions
    )
    approvals = "; ".join(
        f"{a['action']}: {a['status']}" + (f" by {a['approver']}" if a["approver"] else "")
        for a in f.approvals
    )
    return [
        f.name,
        f.kind,
        f.service,
        _clock(f.injected, t0),
        fmt_duration(f.ttd_s),
        fmt_duration(f.ttr_s),
        actions or "none",
        approvals or "none",
        "met" if f.ok else "NOT MET",
    ]


def _probes(phase: str, results: list[dict[str, Any]]) -> str:
    def one(r: dict[str, Any]) -> str:
        value = "-" if r["value"] is None else format(r["value"], ".4g")
        return f"{r['probe']} = {value} ({r['tolerance']}) {'ok' if r['ok'] else 'FAILED'}"

    return (
        f"<li>{html.escape(phase)}: {html.escape(', '.join(one(r) for r in results) or 'not checked')}</li>"
    )


def _during(rows: list[dict[str, Any]]) -> str:
    def one(r: dict[str, Any]) -> str:
        span = "-" if r["min"] is None else f"{r['min']:.4g}..{r['max']:.4g}"
        return f"{r['probe']} held {r['held']}/{r['samples']} minutes (range {span}, {r['tolerance']})"

    return f"<li>during: {html.escape('; '.join(one(r) for r in rows) or 'not sampled')}</li>"


def _section(result: RunResult) -> str:
    rec = result.record
    x0, x1 = rec["started"] - 600.0, rec["ended"]
    rank = {s: i for i, s in enumerate(KEY_METRICS)}
    services = sorted(
        {k.split("|")[0] for k in rec.get("series", {})}, key=lambda s: (rank.get(s, len(rank)), s)
    )
    lanes = "".join(
        f'<div class="lane-row"><h3>{html.escape(s)}</h3>{_svg(s, result, x0, x1)}</div>' for s in services
    )
    unexpected = (
        "".join(
            "<li>" + html.escape(f"{a['action']} on {a['target']} ({a['rule']})") + "</li>"
            for a in result.unexpected
        )
        or "<li>none</li>"
    )
    reasons = (
        "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons) or "<li>every expectation met</li>"
    )
    facts = (
        f"{result.title}. Detector {rec.get('detector')}, bundle {rec.get('bundle_version')}, "
        f"clock x{rec['speed']:g}."
    )
    table = html_table(
        FAULT_COLUMNS, [_fault_row(f, rec["started"]) for f in result.faults], f"faults-table-{result.name}"
    )
    return (
        f'<section class="run" data-verdict="{result.verdict}"><h2>{html.escape(result.name)}: '
        f'<span class="verdict {result.verdict}">{result.verdict.upper()}</span></h2>'
        f"<p>{html.escape(facts)}</p><h3>Time to detect and recover</h3>{table}"
        f"<h3>Steady state</h3><ul>{_probes('before', rec['before'])}{_during(rec.get('during', []))}"
        f"{_probes('after', rec['after'])}</ul>"
        f"<h3>Unexpected actions</h3><ul>{unexpected}</ul><h3>Verdict</h3><ul>{reasons}</ul>"
        f'<h3>Timeline</h3>{LEGEND}<div class="timeline" data-run="{html.escape(result.name)}">{lanes}</div>'
        "</section>"
    )


def render_html(results: list[RunResult], title: str = "selfheal chaos report") -> str:
    """One page for one or more runs (a game day and its variants side by side)."""
    overview = html_table(
        OVERVIEW_COLUMNS,
        [
            [
                r.name,
                r.verdict,
                len(r.faults),
                fmt_duration(_mean([f.ttd_s for f in r.faults])),
                fmt_duration(_mean([f.ttr_s for f in r.faults])),
                sum(len(f.actions) for f in r.faults),
                len(r.unexpected),
                len(r.approvals),
            ]
            for r in results
        ],
        "faults-table",
    )
    data = json.dumps([r.as_dict() for r in results], default=str).replace("</", "<\\/")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f'<div id="overview">{overview}</div>\n'
        f'<div id="timeline">{"".join(_section(r) for r in results)}</div>\n'
        f'<script type="application/json" id="chaos-data">{data}</script>\n<script>{SELF_CHECK}</script>\n'
        "</body></html>\n"
    )


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def write_report(
    results: list[RunResult], out_dir: Path, title: str = "selfheal chaos report"
) -> tuple[Path, Path]:
    """``report.html`` and ``summary.txt`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    page.write_text(render_html(results, title))
    summary = out_dir / "summary.txt"
    summary.write_text("\n\n".join(render_text(r) for r in results) + "\n")
    return page, summary
