"""The console's pages and forms (FastAPI routes rendering Jinja2 templates).

Auth: an operator enters a token once (``/login``); the session cookie (signed, HttpOnly,
SameSite=Strict, Secure when ``public_url`` is https) keeps the token's *name*, never the token.
Without a session the console is read-only (on loopback; beyond it, every page needs one, as the
API's reads do). Every state-changing form carries the session's CSRF token and is refused (403)
without it. Approving, rejecting, the kill switch, modes and alarm labels go through the same
functions as the API (``engine.runtime.api.settle``, ``change_mode``, the writer's
``label_event``), so the rules are the same: the shared token cannot settle a request restricted to
named approvers, and an approver sees buttons only for requests they may settle.

Pages read the journal through the console's own read-only connection, never the engine's (whose
lock the journal writer holds while it commits); the services table and the approvals queue are
built once per change and shared (``engine.runtime.console.live``).

Every page is sent with a Content-Security-Policy that allows no inline script or style: the one
script (``static/console.js``) subscribes to ``/live`` (server-sent events) and reloads the part
of the page that changed (the page says which versions it shows; the stream says the latest).
"""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.middleware.sessions import SessionMiddleware

from engine.durations import since_ts
from engine.errors import EngineError
from engine.runtime.api import change_mode, name_of, settle
from engine.runtime.config import LOOPBACK
from engine.runtime.console.live import History, Live, Views
from engine.runtime.journal import KINDS, Journal
from engine.runtime.ladder import MODES, policy_names, would_be
from engine.runtime.notify import evidence
from engine.runtime.outcomes import LABEL_PREFIX
from engine.runtime.process import Engine

HERE = Path(__file__).resolve().parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TIMELINE_KINDS = ("events", "decisions", "approvals", "executions", "verifications", "notifications")
Reason = Annotated[str | None, Form()]


def add_console(app: FastAPI, engine: Engine, *, history_every_s: float = 30.0) -> Live:
    """Serve the console from ``app`` (the engine's API app); returns its live side."""
    reads = engine.journal.reader()  # pages never wait on the writer's lock
    history = History(
        lambda: engine.observations.scores, lambda: engine.observations.clock, every_s=history_every_s
    )
    live = Live(history, stopped=lambda: engine.stopped, on_stop=reads.close)
    views = Views(live)
    engine.listeners.append(live.hear)
    live.start()
    https = (engine.settings.public_url or "").startswith("https://")
    app.add_middleware(
        SessionMiddleware,
        secret_key=secrets.token_hex(32),  # sessions end with the engine: sign in again after a restart
        session_cookie="selfheal_session",
        same_site="strict",
        https_only=https,
        max_age=12 * 3600,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["when"] = _when
    templates.env.filters["duration"] = _duration
    templates.env.globals["sparkline"] = sparkline
    settings = engine.settings
    journal = reads

    def session(request: Request) -> dict[str, Any]:
        """Who is signed in (``None``: read-only) and the CSRF token of the session."""
        s = request.session
        if "csrf" not in s:
            s["csrf"] = secrets.token_urlsafe(32)
        if s.get("who") is None and settings.host not in LOOPBACK and request.url.path != "/login":
            raise HTTPException(303, headers={"Location": "/login"})
        return {"who": s.get("who"), "csrf": s["csrf"]}

    def page(request: Request, name: str, **context: Any) -> Response:
        context = {
            **session(request),
            "paused": engine.paused,
            "path": request.url.path,
            "topics": dict(live.versions),
            "epoch": live.epoch,
            **context,
        }
        response = templates.TemplateResponse(request, name, context)
        response.headers.update(SECURITY_HEADERS)
        return response

    def acting(request: Request, csrf: str) -> str:
        """The signed-in operator of a form post; 403 without a session or a valid CSRF token."""
        expected = request.session.get("csrf") or ""
        if not csrf or not expected or not hmac.compare_digest(csrf, expected):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and retry")
        who = request.session.get("who")
        if who is None:
            raise HTTPException(403, "read-only session: sign in with your token first")
        return str(who)

    def services_view() -> dict[str, Any]:
        """The services table (rows and HTML), once per change: every client gets this copy."""
        rows, guards = service_rows(engine, reads, history)
        html = templates.get_template("services_table.html").render(services=rows, guards=guards)
        return {"rows": rows, "guards": guards, "html": Markup(html)}

    def approvals_view() -> list[dict[str, Any]]:
        """The pending requests with their decision and evidence, once per change."""
        out = []
        for row in journal.pending_approvals():
            decision = journal.decision(row["decision_id"]) or {}
            ev = evidence(journal, decision)
            at, score = ev.get("event_ts"), ev.get("score")
            chart = [] if at is None else history.around(row["service"], at)
            if at is not None and score is not None:  # the event's own score, wherever samples fell
                chart = sorted({*chart, (float(at), float(score))})
            out.append({**row, "decision": decision, "evidence": ev, "chart": chart})
        return out

    def back(to: str, message: str | None = None, request: Request | None = None) -> Response:
        if message and request is not None:
            request.session["flash"] = message
        return RedirectResponse(to, status_code=303)

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def services(request: Request) -> Response:
        return page(
            request, "services.html", view=views.get("services", services_view), flash=_flash(request)
        )

    @app.get("/services/table", response_class=HTMLResponse, include_in_schema=False)
    def services_table(request: Request) -> Response:
        """The table alone, the same HTML for every client: what the page swaps in on a change."""
        session(request)
        return HTMLResponse(views.get("services", services_view)["html"], headers=SECURITY_HEADERS)

    @app.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
    def approvals(request: Request) -> Response:
        return page(request, "approvals.html", flash=_flash(request), **approvals_context(request))

    @app.get("/approvals/list", response_class=HTMLResponse, include_in_schema=False)
    def approvals_list(request: Request) -> Response:
        """The queue alone: what the page's script swaps in when an approval event arrives."""
        return page(request, "approvals_list.html", **approvals_context(request))

    def approvals_context(request: Request) -> dict[str, Any]:
        who, now = request.session.get("who"), time.time()
        out = []
        for row in views.get("approvals", approvals_view):
            allowed = row.get("allowed_approvers") or []
            may = who is not None and (who in allowed if allowed else True)
            out.append({**row, "left_s": max(0.0, row["expires_ts"] - now), "may": may})
        return {"approvals": out}

    @app.get("/services/{service}", response_class=HTMLResponse, include_in_schema=False)
    def timeline(request: Request, service: str, since: str | None = None) -> Response:
        start = _since(since)
        items = timeline_items(reads, service, since=start)
        return page(
            request,
            "timeline.html",
            service=service,
            items=items,
            history=history.of(service),
            labels=labels(),
            flash=_flash(request),
        )

    @app.get("/incidents/{decision_id}", response_class=HTMLResponse, include_in_schema=False)
    def incident(request: Request, decision_id: str) -> Response:
        items = journal.incident(decision_id)
        if not items:
            raise HTTPException(404, f"no decision {decision_id}")
        decision = next(row for _, kind, row in items if kind == "decision")
        return page(
            request, "incident.html", decision=decision, items=items, labels=labels(), flash=_flash(request)
        )

    def labels() -> dict[str, dict[str, Any]]:
        """Every event's current label (false or true alarm) with who and why, in one read."""
        return {row["key"][len(LABEL_PREFIX) :]: row for row in journal.controls(LABEL_PREFIX)}

    @app.get("/journal", response_class=HTMLResponse, include_in_schema=False)
    def search(
        request: Request, kind: str = "decisions", service: str | None = None, since: str | None = None
    ) -> Response:
        if kind not in KINDS:
            raise HTTPException(422, f"kind must be one of {', '.join(KINDS)}")
        service = service or None
        rows = journal.recent(
            kind, service=service if kind != "control" else None, since=_since(since), limit=200
        )
        return page(
            request,
            "journal.html",
            rows=rows,
            kind=kind,
            kinds=KINDS,
            service=service or "",
            since=since or "",
        )

    @app.get("/control", response_class=HTMLResponse, include_in_schema=False)
    def control(request: Request) -> Response:
        names = sorted(policy_names(engine.components.policies) or [])
        ladder = engine.writer.decider.modes
        now = time.time()
        policies = [
            {"name": n, "mode": ladder.of(n, ""), "observed": would_be(journal, n, now=now)["counts"]}
            for n in names
        ]
        return page(
            request,
            "control.html",
            switch=journal.control("paused"),
            history=journal.recent("control", limit=50),
            policies=policies,
            modes=ladder.snapshot(),
            mode_names=MODES,
            flash=_flash(request),
        )

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> Response:
        return page(request, "login.html", flash=_flash(request))

    @app.get("/live", include_in_schema=False)
    def stream(request: Request) -> Response:
        session(request)
        return StreamingResponse(
            live.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ------------------------------------------------------------------ forms
    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form()], csrf: Annotated[str, Form()] = "") -> Response:
        expected = request.session.get("csrf") or ""
        if not csrf or not hmac.compare_digest(csrf, expected):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and retry")
        who = name_of(settings, token.strip())
        if who is None:
            return back("/login", "that token is not valid", request)
        request.session.clear()  # a new session (and CSRF token) for the signed-in operator
        request.session.update({"who": who, "csrf": secrets.token_urlsafe(32)})
        return back("/approvals", f"signed in as {who}", request)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        acting(request, csrf)
        request.session.clear()
        return back("/")

    @app.post("/approvals/{approval_id}/{verdict}", include_in_schema=False)
    def decide(
        request: Request,
        approval_id: str,
        verdict: str,
        csrf: Annotated[str, Form()] = "",
        reason: Reason = None,
    ) -> Response:
        who = acting(request, csrf)
        if verdict not in ("approve", "reject"):
            raise HTTPException(404, "approve or reject")
        try:
            settle(engine, approval_id, verdict == "approve", reason or None, who)
        except HTTPException as exc:
            return _refused(exc, "/approvals")
        return back("/approvals", f"{approval_id} {verdict}d by {who}", request)

    @app.post("/control/{switch}", include_in_schema=False)
    def kill_switch(
        request: Request, switch: str, csrf: Annotated[str, Form()] = "", reason: Reason = None
    ) -> Response:
        who = acting(request, csrf)
        if switch not in ("pause", "resume"):
            raise HTTPException(404, "pause or resume")
        engine.writer.set_paused(switch == "pause", actor=who, reason=reason or None)
        return back("/control", f"actions {switch}d by {who}", request)

    @app.post("/modes", include_in_schema=False)
    def mode(
        request: Request,
        policy: Annotated[str, Form()],
        mode: Annotated[str, Form()],
        csrf: Annotated[str, Form()] = "",
        service: Annotated[str, Form()] = "",
        reason: Reason = None,
    ) -> Response:
        who = acting(request, csrf)
        if mode not in MODES:
            raise HTTPException(422, f"mode must be one of {', '.join(MODES)}")
        try:
            change_mode(engine, policy, service or None, mode, reason or None, who)
        except HTTPException as exc:
            return _refused(exc, "/control")
        return back("/control", f"{policy}{'/' + service if service else ''} is now {mode}", request)

    @app.post("/events/{event_id}/label", include_in_schema=False)
    def label(
        request: Request,
        event_id: str,
        label: Annotated[str, Form()],
        csrf: Annotated[str, Form()] = "",
        reason: Reason = None,
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        """Mark an anomaly a false (or true) alarm, as ``POST /v1/events/{id}/label`` does."""
        who = acting(request, csrf)
        to = next if next.startswith("/") and not next.startswith("//") else "/"  # never off the console
        try:
            engine.writer.label_event(event_id, label, actor=who, reason=reason or None)
        except LookupError as exc:
            return _refused(HTTPException(404, str(exc)), to)
        except ValueError as exc:
            return _refused(HTTPException(422, str(exc)), to)
        return back(to, f"{event_id} marked {label.replace('_', ' ')} by {who}", request)

    app.state.console_live = live
    return live


def _refused(exc: HTTPException, to: str) -> Response:
    """A refused form (already settled, not yours, ...): the reason, and the way back to ``to``,
    the page the form was on."""
    detail, href = escape(str(exc.detail)), escape(to)
    body = (
        f'<!doctype html><title>refused</title><p id="refused">{detail}</p>'
        f'<a id="back" href="{href}">back</a>'
    )
    return HTMLResponse(body, status_code=exc.status_code, headers=SECURITY_HEADERS)


def _flash(request: Request) -> str | None:
    return request.session.pop("flash", None)


# ---------------------------------------------------------------------- what the pages show
def service_rows(
    engine: Engine, journal: Journal, history: History
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per known service (score against threshold, health, its latest decision, what
    the safeguards count for it), and the engine-wide safeguards: two statements, whatever the
    number of services."""
    scores, health = engine.observations.scores.copy(), engine.events.health.copy()
    latest = journal.latest_decisions()
    decider = engine.writer.decider
    threshold, now, ladder = engine.events.threshold, time.time(), decider.modes
    diagnoses = engine.diagnoses.copy()
    services = sorted(set(scores) | set(health))
    limits = decider.limits
    counts, _ = journal.decision_context(services, [], now=now, cap=limits.max_actions_per_hour + 1)
    rows = []
    for service in services:
        score, seen = scores.get(service, (None, None))
        decision = latest.get(service)
        last, hour, in_flight = counts.per_target.get(service, (None, 0, 0))
        rows.append(
            {
                "service": service,
                "score": score,
                "threshold": threshold,
                "anomalous": health.get(service, False),
                "age_s": None if seen is None else now - seen,
                "decision": decision,
                "diagnosis": diagnoses.get(service),
                "mode": ladder.of(decision["policy"], service) if decision else None,
                "history": history.of(service),
                "guard": {
                    "last_action_s": None if last is None else now - last,
                    "actions_last_hour": hour,
                    "in_flight": in_flight,
                    "maintenance": next(
                        (w.reason or "yes" for w in decider.maintenance if w.covers(service, now)), None
                    ),
                },
            }
        )
    guards = {
        "paused": engine.paused,
        "actions_last_hour": counts.global_last_hour,
        "max_actions_per_hour": limits.max_actions_per_hour,
        "failures_last_hour": counts.recent_failures,
        "max_failures_per_hour": limits.max_failures_per_hour,
        "in_flight": counts.global_in_flight,
        "max_concurrent": limits.max_concurrent,
    }
    guards["tripped"] = (
        counts.global_last_hour >= limits.max_actions_per_hour
        or counts.recent_failures >= limits.max_failures_per_hour
    )
    return rows, guards


def timeline_items(journal: Journal, service: str, *, since: float | None) -> list[dict[str, Any]]:
    """Everything the journal holds about ``service``, oldest first."""
    items = []
    for kind in TIMELINE_KINDS:
        for row in journal.recent(kind, service=service, since=since, limit=200):
            ts = row.get("ts") or row.get("created_ts") or row.get("started_ts") or 0.0
            items.append({"ts": ts, "kind": kind, "row": row})
    return sorted(items, key=lambda i: i["ts"])


def sparkline(
    points: list[tuple[float, float]],
    threshold: float | None = None,
    *,
    mark: float | None = None,
    w: int = 160,
    h: int = 32,
) -> str:
    """An SVG polyline of (time, score), the threshold as a dashed line and ``mark`` (an event's
    time) as a vertical one (no script, no style)."""
    if len(points) < 2:
        return Markup(
            f'<svg class="spark" width="{w}" height="{h}" role="img" aria-label="no history yet"></svg>'
        )
    t0, t1 = points[0][0], points[-1][0]
    values = [v for _, v in points] + ([threshold] if threshold is not None else [])
    lo, hi = min(values), max(values)
    span, dt = (hi - lo) or 1.0, (t1 - t0) or 1.0

    def xy(t: float, v: float) -> str:
        return f"{(t - t0) / dt * (w - 2) + 1:.1f},{h - 1 - (v - lo) / span * (h - 2):.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    marks = ""
    if threshold is not None:
        y = xy(t0, threshold).split(",")[1]
        marks += f'<line x1="0" x2="{w}" y1="{y}" y2="{y}" stroke="#c33" stroke-dasharray="3 2"/>'
    if mark is not None and t0 <= mark <= t1:
        x = xy(mark, lo).split(",")[0]
        marks += f'<line class="event" x1="{x}" x2="{x}" y1="0" y2="{h}" stroke="#888"/>'
    label = "score around the event" if mark is not None else "score, last hour"
    return Markup(
        f'<svg class="spark" width="{w}" height="{h}" role="img" aria-label="{label}">{marks}'
        f'<polyline points="{line}" fill="none" stroke="#246" stroke-width="1.5"/></svg>'
    )


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _since(value: str | None) -> float | None:
    try:
        return since_ts(value or None)
    except EngineError as exc:
        raise HTTPException(422, f"since: {exc}") from exc
