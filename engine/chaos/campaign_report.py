"""A campaign's figures and its report: one self-contained HTML page and a text summary.

Figures (what promotion and the README quote; ``CampaignResult.metrics`` logs them to MLflow):

- heal rate: faults whose derived expectation was met (the remedy its policy declares, on the
  root, in time, approved where it must be, verified by the engine) over all faults; per kind, per
  strength band (0.5-1x, 1-2x, 2-5x of the shipped fault) and alone vs. two at once;
- time to detect and to recover (platform seconds; ``engine.chaos.results`` defines them) as
  distributions per kind;
- every executed action that is not a fault's remedy, with its rule: on a victim, a wrong remedy
  on a root, or in a quiet control; and high-risk actions executed without an approval;
- approvals asked, with how they ended and whether the campaign expected them.

The page follows ``engine.chaos.report``: inline CSS and SVG, no network, stable element ids
(``kinds-table``, ``ttd-plot``, ``ttr-plot``, ``unexpected-table``, ``approvals-table``,
``experiments-table``) and a self-check a headless browser reads back.
"""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.chaos.report import STYLE, Raw, element, fmt_duration, html_table
from engine.simulation.config import INCIDENT_KINDS
from engine.tables import text_table

BANDS = (("0.5-1x", 0.0, 1.0), ("1-2x", 1.0, 2.0), ("2-5x", 2.0, float("inf")))
EXTRA_ROLES = ("victim", "wrong remedy on a root", "control")


@dataclass
class CampaignResult:
    """What a campaign found, experiment by experiment (``outcomes``: see ``campaign_run.outcome``)."""

    seed: int
    outcomes: list[dict[str, Any]]
    uncovered: list[tuple[str, str]] = field(default_factory=list)
    speed: float = 720.0
    workers: int = 1
    detector: str = ""
    bundle_version: str = ""
    wall_s: float = 0.0

    @property
    def faults(self) -> list[dict[str, Any]]:
        return [{**f, "experiment": o["name"], "pair": o["pair"]} for o in self.outcomes for f in o["faults"]]

    def actions(self, *roles: str) -> list[dict[str, Any]]:
        return [
            {**a, "experiment": o["name"]} for o in self.outcomes for a in o["actions"] if a["role"] in roles
        ]

    @property
    def unapproved_high_risk(self) -> list[dict[str, Any]]:
        every = self.actions("remedy", *EXTRA_ROLES)
        return [a for a in every if a["risk"] == "high" and not a["approved"]]

    def groups(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Faults grouped by kind, by strength band and by concurrency."""
        faults = self.faults
        kinds = {k: [f for f in faults if f["kind"] == k] for k in INCIDENT_KINDS}
        bands = {name: [f for f in faults if lo <= f["scale"] < hi] for name, lo, hi in BANDS}
        together = {
            "alone": [f for f in faults if not f["pair"]],
            "two at once": [f for f in faults if f["pair"]],
        }
        return {"kind": kinds, "strength": bands, "concurrency": together}

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow (NaN-free: a group without faults logs no rate)."""
        faults = self.faults
        controls = [o for o in self.outcomes if o["control"]]
        walls = [o["wall_s"] for o in self.outcomes]
        out: dict[str, float] = {
            "experiments": float(len(self.outcomes)),
            "experiments_passed": float(sum(o["verdict"] == "passed" for o in self.outcomes)),
            "experiments_errored": float(sum(o["verdict"] == "error" for o in self.outcomes)),
            "faults": float(len(faults)),
            "faults_healed": float(sum(f["healed"] for f in faults)),
            "victim_actions": float(len(self.actions("victim"))),
            "wrong_root_actions": float(len(self.actions("wrong remedy on a root"))),
            "controls": float(len(controls)),
            "control_actions": float(len(self.actions("control"))),
            "unapproved_high_risk_actions": float(len(self.unapproved_high_risk)),
            "approvals_asked": float(sum(len(o["approvals"]) for o in self.outcomes)),
            "wall_s_total": self.wall_s,
        }
        if walls:
            out["wall_s_per_experiment_median"] = statistics.median(walls)
        if faults:
            out["heal_rate"] = out["faults_healed"] / len(faults)
            out["remedy_rate"] = sum(f["remedied"] for f in faults) / len(faults)
            out["detect_rate"] = sum(f["detected"] for f in faults) / len(faults)
        for group, members in self.groups().items():
            for name, fs in members.items():
                if not fs:
                    continue
                key = name.replace(" ", "_").replace("-", "_").replace(".", "_")
                out[f"heal_rate_{group}_{key}"] = sum(f["healed"] for f in fs) / len(fs)
                out[f"remedy_rate_{group}_{key}"] = sum(f["remedied"] for f in fs) / len(fs)
                out[f"faults_{group}_{key}"] = float(len(fs))
                if group == "kind":
                    for what in ("ttd_s", "ttr_s"):
                        vals = [f[what] for f in fs if f[what] is not None]
                        if vals:
                            out[f"{what.removesuffix('_s')}_median_s_{key}"] = statistics.median(vals)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "speed": self.speed,
            "workers": self.workers,
            "detector": self.detector,
            "bundle_version": self.bundle_version,
            "wall_s": self.wall_s,
            "metrics": self.metrics(),
            "uncovered": [list(p) for p in self.uncovered],
            "outcomes": self.outcomes,
        }


def _rate(fs: list[dict[str, Any]], key: str = "healed") -> str:
    if not fs:
        return "-"
    hits = sum(f[key] for f in fs)
    return f"{hits}/{len(fs)} ({hits / len(fs):.0%})"


def _dist(values: list[float]) -> str:
    """median (p10-p90) of platform seconds."""
    if not values:
        return "-"
    vals = sorted(values)
    if len(vals) == 1:
        return fmt_duration(vals[0])
    q = statistics.quantiles(vals, n=10, method="inclusive")
    return f"{fmt_duration(statistics.median(vals))} ({fmt_duration(q[0])}-{fmt_duration(q[-1])})"


KIND_COLUMNS = [
    "kind",
    "faults",
    "detected",
    "remedied",
    "healed",
    "TTD median (p10-p90)",
    "TTR median (p10-p90)",
]


def _kind_rows(result: CampaignResult) -> list[list[str]]:
    rows = []
    for kind, fs in result.groups()["kind"].items():
        rows.append(
            [
                kind,
                str(len(fs)),
                str(sum(f["detected"] for f in fs)),
                _rate(fs, "remedied"),
                _rate(fs),
                _dist([f["ttd_s"] for f in fs if f["ttd_s"] is not None]),
                _dist([f["ttr_s"] for f in fs if f["ttr_s"] is not None]),
            ]
        )
    return rows


def render_text(result: CampaignResult) -> str:
    """The headline figures and the per-kind table, for a terminal."""
    m = result.metrics()
    faults = result.faults
    lines = [
        f"campaign {result.seed}: {len(result.outcomes)} experiments ({int(m['controls'])} quiet "
        f"controls), {len(faults)} faults; detector {result.detector}, bundle {result.bundle_version}, "
        f"x{result.speed:g}",
        f"  healed {_rate(faults)} (remedied {_rate(faults, 'remedied')}); "
        f"actions on victims {int(m['victim_actions'])}, wrong remedies on a "
        f"root {int(m['wrong_root_actions'])}, actions in quiet controls {int(m['control_actions'])}, "
        f"high-risk actions without approval {int(m['unapproved_high_risk_actions'])}",
    ]
    lines += ["  " + line for line in text_table([list(KIND_COLUMNS), *_kind_rows(result)]).splitlines()]
    for group in ("strength", "concurrency"):
        parts = [f"{name} {_rate(fs)}" for name, fs in result.groups()[group].items() if fs]
        lines.append(f"  healed by {group}: " + ", ".join(parts))
    if "wall_s_per_experiment_median" in m:
        lines.append(
            f"  wall time {result.wall_s:.0f} s, median {m['wall_s_per_experiment_median']:.1f} s "
            f"per experiment ({result.workers} worker(s))"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ HTML
PW, ROW_H, PAD_L, PAD_R = 960, 26, 150, 20


def _strip_plot(result: CampaignResult, what: str, plot_id: str) -> str:
    """One row per kind: each fault's value as a dot, its median as a bar (minutes on x)."""
    kinds = result.groups()["kind"]
    values = {k: [f[what] / 60.0 for f in fs if f[what] is not None] for k, fs in kinds.items()}
    top = max([v for vs in values.values() for v in vs] or [1.0])
    height = ROW_H * len(kinds) + 30

    def x(v: float) -> float:
        return PAD_L + v / top * (PW - PAD_L - PAD_R)

    parts = []
    for i, (kind, vs) in enumerate(values.items()):
        y = 10 + i * ROW_H + ROW_H / 2
        parts.append(
            element("text", f"{kind} ({len(vs)})", x=4, y=round(y + 4, 1), font_size=11, fill="#111827")
        )
        parts.append(element("line", x1=PAD_L, x2=PW - PAD_R, y1=y, y2=y, stroke="#e5e7eb"))
        for v in vs:
            parts.append(
                f'<circle class="point" cx="{x(v):.1f}" cy="{y:.1f}" r="3.5" fill="#2563eb" opacity="0.6">'
                f"<title>{v:.1f} min</title></circle>"
            )
        if vs:
            m = statistics.median(vs)
            parts.append(
                f'<line class="median" x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{y - 9:.1f}" y2="{y + 9:.1f}" '
                f'stroke="#d97706" stroke-width="3"><title>median {m:.1f} min</title></line>'
            )
    base = 10 + len(kinds) * ROW_H + 14
    for i in range(6):
        v = top * i / 5
        parts.append(
            element(
                "text",
                f"{v:.0f} min",
                x=round(x(v), 1),
                y=base,
                font_size=10,
                text_anchor="middle",
                fill="#6b7280",
            )
        )
    label = {"ttd_s": "time to detect", "ttr_s": "time to recover"}[what]
    return (
        f'<svg class="dist" id="{plot_id}" viewBox="0 0 {PW} {height}" width="100%" role="img" '
        f'aria-label="{html.escape(label)} per kind">{"".join(parts)}</svg>'
    )


def _link(o: dict[str, Any]) -> Raw:
    if not o.get("report"):
        return Raw(html.escape(o["name"]))
    return Raw(f'<a href="{html.escape(o["report"])}">{html.escape(o["name"])}</a>')


SELF_CHECK = """
window.addEventListener("load", function () {
  var plots = Array.prototype.filter.call(document.querySelectorAll("svg.dist"), function (svg) {
    var box = svg.getBoundingClientRect();
    return box.width > 100 && box.height > 40;
  });
  document.body.setAttribute("data-plots-rendered", String(plots.length));
  function count(selector) { return String(document.querySelectorAll(selector).length); }
  document.body.setAttribute("data-points", count("svg.dist circle.point"));
  document.body.setAttribute("data-kind-rows", count("#kinds-table tbody tr"));
  document.body.setAttribute("data-experiment-rows", count("#experiments-table tbody tr"));
});
"""


def render_html(result: CampaignResult) -> str:
    m = result.metrics()
    faults = result.faults
    title = f"selfheal chaos campaign {result.seed}"
    headline = [
        f"{len(result.outcomes)} experiments: {len(faults)} faults and {int(m['controls'])} quiet controls; "
        f"detector {result.detector}, bundle {result.bundle_version}, clock x{result.speed:g}",
        f"faults healed (the remedy their policy declares, on the root, in time, verified by the engine): "
        f"{_rate(faults)}; remedied (the same, verified or not): {_rate(faults, 'remedied')}",
        f"actions on victims: {int(m['victim_actions'])}; "
        f"wrong remedies on a root: {int(m['wrong_root_actions'])}; "
        f"actions in quiet controls: {int(m['control_actions'])}; high-risk actions without an approval: "
        f"{int(m['unapproved_high_risk_actions'])}",
        f"experiments passed: {int(m['experiments_passed'])}/{len(result.outcomes)}; wall time "
        f"{result.wall_s:.0f} s ({result.workers} worker(s))",
    ]
    bands = html_table(
        ["grouping", "group", "healed (rate)"],
        [
            [g, name, _rate(fs)]
            for g in ("strength", "concurrency")
            for name, fs in result.groups()[g].items()
        ],
        "bands-table",
    )
    extra = result.actions(*EXTRA_ROLES)
    unexpected = html_table(
        ["experiment", "kind of action", "action", "target", "rule", "risk", "verification", "approved"],
        [
            [
                _link(_by_name(result, a["experiment"])),
                a["role"],
                a["action"],
                a["target"],
                a["rule"],
                a["risk"],
                a["verification"],
                "yes" if a["approved"] else "no",
            ]
            for a in extra
        ],
        "unexpected-table",
    )
    approvals = html_table(
        ["experiment", "action", "target", "status", "approver", "asked for the expected remedy"],
        [
            [
                _link(o),
                a["action"],
                a["target"],
                a["status"],
                a["approver"] or "-",
                "yes" if a["expected"] else "no",
            ]
            for o in result.outcomes
            for a in o["approvals"]
        ],
        "approvals-table",
    )
    experiments = html_table(
        ["experiment", "faults", "starts", "verdict", "healed", "TTD", "TTR", "other actions", "why", "wall"],
        [
            [
                _link(o),
                o["label"],
                o["when"],
                o["verdict"],
                "-" if o["control"] else f"{sum(f['healed'] for f in o['faults'])}/{len(o['faults'])}",
                " / ".join(fmt_duration(f["ttd_s"]) for f in o["faults"]) or "-",
                " / ".join(fmt_duration(f["ttr_s"]) for f in o["faults"]) or "-",
                str(sum(a["role"] != "remedy" for a in o["actions"])),
                "; ".join(o["reasons"]) or "-",
                f"{o['wall_s']:.1f} s",
            ]
            for o in result.outcomes
        ],
        "experiments-table",
    )
    uncovered = ", ".join(f"{k} on {s}" for k, s in result.uncovered) or "none"
    data = json.dumps(result.as_dict(), default=str).replace("</", "<\\/")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f'<ul id="headline">{"".join(f"<li>{html.escape(h)}</li>" for h in headline)}</ul>\n'
        f"<h2>Per fault kind</h2>{html_table(KIND_COLUMNS, _kind_rows(result), 'kinds-table')}\n"
        f"<h2>Time to detect</h2>{_strip_plot(result, 'ttd_s', 'ttd-plot')}\n"
        f"<h2>Time to recover</h2>{_strip_plot(result, 'ttr_s', 'ttr-plot')}\n"
        f"<h2>By strength and concurrency</h2>{bands}\n"
        f"<h2>Actions that were not a fault's remedy</h2>{unexpected}\n"
        f"<h2>Approvals</h2>{approvals}\n"
        f"<h2>Experiments</h2>{experiments}\n"
        f"<h2>Not generated</h2><p>The platform can have these faults but no policy declares a remedy for "
        f"them, so the campaign draws none: {html.escape(uncovered)}.</p>\n"
        f'<script type="application/json" id="campaign-data">{data}</script>\n<script>{SELF_CHECK}</script>\n'
        "</body></html>\n"
    )


def _by_name(result: CampaignResult, name: str) -> dict[str, Any]:
    return next(o for o in result.outcomes if o["name"] == name)


def write_campaign_report(result: CampaignResult, out_dir: Path) -> tuple[Path, Path]:
    """``campaign.html``, ``summary.txt`` and ``results.json`` in ``out_dir``; the first two's paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "campaign.html"
    page.write_text(render_html(result))
    summary = out_dir / "summary.txt"
    summary.write_text(render_text(result) + "\n")
    (out_dir / "results.json").write_text(json.dumps(result.as_dict(), indent=1, default=str))
    return page, summary
