"""The engine's HTTP API (FastAPI): telemetry push, journal reads, approvals, kill switch, probes.

Authentication is a bearer token from the configuration (``token``), plus optional named tokens
(``approver_tokens``). The actor recorded for an approval or the kill switch is the identity bound
to the token (the token's name, or ``token`` for the shared one), never a name the body gives: a
body that claims one is refused (422). Operator actions (approve, reject, pause, resume, label) always
need a token; when the engine listens beyond loopback, every ``/v1`` endpoint does.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from engine.runtime.config import LOOPBACK, EngineSettings
from engine.runtime.journal import KINDS
from engine.runtime.ladder import Mode, policy_names, would_be
from engine.runtime.notify import evidence
from engine.runtime.process import Engine
from engine.runtime.supervisor import ApprovalRefused
from engine.telemetry.points import parse_body

SHARED = "token"  # the caller's name when it authenticated with the shared ``token``
CLOSE = {"Connection": "close"}  # after refusing a body unread: the server stops reading the rest


class _ModeChange(BaseModel):
    """A step on the autonomy ladder: one policy, or one service under it."""

    model_config = ConfigDict(extra="forbid")
    policy: str
    service: str | None = None
    mode: Mode
    reason: str | None = None


class _Body(BaseModel):
    """What an operator may say: why. Who is the token's business (no ``approver`` field)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


class _Label(BaseModel):
    """An operator's word on one anomaly event (research uses it as a label)."""

    model_config = ConfigDict(extra="forbid")
    label: Literal["false_alarm", "true_alarm"]
    reason: str | None = None


def name_of(settings: EngineSettings, given: str) -> str | None:
    """Whose token ``given`` is: its name in ``approver_tokens``, ``SHARED``, or None."""
    for name, token in settings.approver_tokens.items():
        if hmac.compare_digest(given.encode(), token.encode()):
            return str(name)
    if settings.token and hmac.compare_digest(given.encode(), settings.token.encode()):
        return SHARED
    return None


def identify(request: Request) -> str:
    """The authenticated caller's name; 401 without a valid token."""
    settings = request.app.state.engine.settings
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    name = name_of(settings, given)
    if name is not None:
        return name
    if not settings.token and not settings.approver_tokens:
        raise HTTPException(401, "the engine has no token configured; set SELFHEAL_ENGINE_TOKEN and restart")
    raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})


def reader(request: Request) -> None:
    """Reads are open on loopback; beyond it every endpoint needs the token."""
    if request.app.state.engine.settings.host not in LOOPBACK:
        identify(request)


Operator = Annotated[str, Depends(identify)]
Reader = Depends(reader)


PUSH_OFF = (
    "push is off in this engine (sources.http: false); send points to one of its file or"
    " Prometheus sources, or set sources.http: true"
)


def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings
    app = FastAPI(title="selfheal engine", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.engine = engine

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        ready = engine.ready.is_set() and engine.healthy
        full = engine.queue.depth >= engine.queue.max_points
        body = {"ready": ready and not full, "queue_depth": engine.queue.depth, "paused": engine.paused}
        return JSONResponse(body, status_code=200 if ready and not full else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/telemetry", dependencies=[Reader])
    async def telemetry(request: Request) -> Response:
        if not settings.sources.http:
            return JSONResponse({"detail": PUSH_OFF}, status_code=404)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_request_bytes:
            return _too_large(settings.max_request_bytes)
        body = await _read_body(request, settings.max_request_bytes, settings.body_read_timeout_s)
        if isinstance(body, Response):
            return body
        points, rejections = parse_body(body, request.headers.get("content-type", ""), engine.intake.names)
        if len(points) + len(rejections) > settings.max_request_points:
            return JSONResponse(
                {"detail": f"more than {settings.max_request_points} points in one request; split it"},
                status_code=413,
            )
        accepted = engine.ingest(points, rejections, source="http")
        if accepted is None:
            retry = max(1, round(engine.settings.tick_s * 4))
            return JSONResponse(
                {"detail": "queue full, nothing accepted; retry later", "queue_depth": engine.queue.depth},
                status_code=429,
                headers={"Retry-After": str(retry)},
            )
        if accepted.rejections:
            first = accepted.rejections[0]
            return JSONResponse(
                {
                    "detail": f"{first.where}: field '{first.field}' {first.reason}",
                    "accepted": accepted.points,
                    "rejected": sum(r.count for r in accepted.rejections),
                    "errors": [r.as_dict() for r in accepted.rejections[:50]],
                },
                status_code=400,
            )
        return JSONResponse({"accepted": accepted.points}, status_code=202)

    @app.get("/v1/decisions", dependencies=[Reader])
    def decisions(
        service: str | None = None,
        status: str | None = None,
        since: float | None = Query(None, description="epoch seconds"),
        kind: str = "decisions",
        limit: int = Query(100, ge=1, le=10_000),
    ) -> Any:
        if kind not in KINDS:
            raise HTTPException(422, f"kind must be one of {', '.join(KINDS)}")
        return engine.journal.recent(kind, service=service, since=since, status=status, limit=limit)

    @app.get("/v1/approvals", dependencies=[Reader])
    def approvals() -> Any:
        return engine.journal.pending_approvals()

    @app.get("/v1/approvals/{approval_id}", dependencies=[Reader])
    def approval(approval_id: str) -> Any:
        """One request with its decision and evidence (where notifications link)."""
        row = engine.journal.approval(approval_id)
        decision = engine.journal.decision(row["decision_id"]) if row else None
        if row is None or decision is None:
            raise HTTPException(404, f"no approval request {approval_id}; list them at /v1/approvals")
        return {**row, "decision": decision, "evidence": evidence(engine.journal, decision)}

    @app.post("/v1/approvals/{approval_id}/approve")
    def approve(approval_id: str, who: Operator, body: _Body | None = None) -> Any:
        return settle(engine, approval_id, True, (body or _Body()).reason, who)

    @app.post("/v1/approvals/{approval_id}/reject")
    def reject(approval_id: str, who: Operator, body: _Body | None = None) -> Any:
        return settle(engine, approval_id, False, (body or _Body()).reason, who)

    @app.post("/v1/pause")
    def pause(who: Operator, body: _Body | None = None) -> Any:
        body = body or _Body()
        engine.writer.set_paused(True, actor=who, reason=body.reason)
        return {"paused": True}

    @app.post("/v1/resume")
    def resume(who: Operator, body: _Body | None = None) -> Any:
        body = body or _Body()
        engine.writer.set_paused(False, actor=who, reason=body.reason)
        return {"paused": False}

    @app.post("/v1/events/{event_id}/label")
    def label(event_id: str, body: _Label, who: Operator) -> Any:
        """Mark an anomaly a false (or true) alarm; `selfheal journal export` hands it to research."""
        try:
            return engine.writer.label_event(event_id, body.label, actor=who, reason=body.reason)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/v1/modes", dependencies=[Reader])
    def modes() -> Any:
        """The autonomy ladder: POLICY or POLICY/SERVICE -> mode; anything unlisted is auto."""
        return {"default": "auto", "modes": engine.writer.decider.modes.snapshot()}

    @app.post("/v1/modes")
    def set_mode(change: _ModeChange, who: Operator) -> Any:
        return change_mode(engine, change.policy, change.service, change.mode, change.reason, who)

    @app.get("/v1/policies/{policy}/observed", dependencies=[Reader])
    def observed(policy: str) -> Any:
        """What the policy would have done in observe mode, and whether each anomaly cleared by itself."""
        return would_be(engine.journal, policy, now=time.time())

    @app.get("/v1/status", dependencies=[Reader])
    def status() -> Any:
        return {
            "paused": engine.paused,
            "ready": engine.ready.is_set(),
            "queue_depth": engine.queue.depth,
            "points_scored": engine.points_scored,
            "rows_scored": engine.rows_scored,
            "bundle_version": engine.components.bundle_version,
            "detector": engine.components.pipeline.detector,
            "time": time.time(),
        }

    return app


def settle(engine: Engine, approval_id: str, approve: bool, reason: str | None, who: str) -> Any:
    """Approve or reject as ``who`` (the API and the console). The token's identity is recorded;
    the shared token names nobody, so it may not settle an approval restricted to named approvers."""
    if who == SHARED:
        pending = engine.journal.approval(approval_id)
        if pending and pending.get("allowed_approvers"):
            raise HTTPException(
                403,
                "the shared token cannot approve an action restricted to named approvers; "
                "use your own token from approver_tokens",
            )
    try:
        return engine.writer.settle_approval(approval_id, approve=approve, approver=who, reason=reason)
    except ApprovalRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def change_mode(
    engine: Engine, policy: str, service: str | None, mode: str, reason: str | None, who: str
) -> dict[str, Any]:
    """A step on the autonomy ladder, by a named approver (the API and the console)."""
    if who == SHARED:
        raise HTTPException(403, "changing a policy's mode needs an approver's own token (approver_tokens)")
    known = policy_names(engine.components.policies)
    if known is not None and policy not in known:
        raise HTTPException(404, f"no policy {policy!r}; policies: {', '.join(sorted(known))}")
    row = engine.writer.set_mode(policy, service, mode, actor=who, reason=reason)
    return {k: row[k] for k in ("policy", "service", "mode", "actor")}


async def _read_body(request: Request, cap: int, timeout_s: float) -> bytes | Response:
    """The body, read as it streams in: a chunked body (no ``Content-Length``) is refused (413) as
    soon as it passes ``cap``, not after it was held whole in memory, and a body that does not
    arrive within ``timeout_s`` is refused (408), so a slow sender cannot hold a connection (and
    its buffers) forever. Either way the connection is closed: the rest of the body is not read."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    return _too_large(cap)
                chunks.append(chunk)
    except TimeoutError:
        return JSONResponse(
            {
                "detail": f"body not received within {timeout_s:g} s (body_read_timeout_s); "
                f"{size} bytes arrived. Send it at once or split it"
            },
            status_code=408,
            headers=CLOSE,
        )
    return b"".join(chunks)


def _too_large(cap: int) -> Response:
    return JSONResponse(
        {"detail": f"body larger than {cap} bytes (max_request_bytes); split it"},
        status_code=413,
        headers=CLOSE,
    )
