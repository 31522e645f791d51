"""Notifications: approval requests, escalations and failed verifications reach people.

The engine config declares channels (``notifications:``), each a webhook with a body format:
``json`` (the generic body, ``generic``), ``slack`` (an incoming-webhook message) or ``pagerduty``
(an Events API v2 ``trigger``). An approval request carries its evidence (score against threshold,
the strongest features, the input window, policy, rule, action, risk, who may approve, when it
expires) and a link to the request, so the person paged can decide without polling.

Why a thread of its own: a receiver that is slow or down must never delay deciding, so ``hear``
only journals the message as ``pending`` and queues it; a pending message left by an engine that
died is sent when the engine starts again, with the same Idempotency-Key (its journal id), so a
receiver that saw it before the crash can tell. Each message is retried with exponential backoff
(tenacity) on transport errors and transient statuses; one that still fails, or that its receiver
refuses (a 4xx other than 408/429: sending it again unchanged will not help), is journaled as
``dead`` with its body (``selfheal journal --kind notifications --status dead``), and every message
sent is journaled as ``sent``: whether the on-call was told is part of an incident's record.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from engine.actions.transport import TRANSIENT_STATUSES
from engine.runtime.journal import Journal

log = logging.getLogger(__name__)

Kind = Literal["approval_requested", "escalated", "verification_failed"]
KINDS: tuple[Kind, ...] = ("approval_requested", "escalated", "verification_failed")
TITLES = {
    "approval_requested": "Approval needed",
    "escalated": "Escalation",
    "verification_failed": "Verification failed",
}


class Channel(BaseModel):
    """One webhook of the ``notifications:`` list in the engine config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="names the channel in the journal")
    url: str = Field(description="http(s) URL the message is POSTed to")
    format: Literal["json", "slack", "pagerduty"] = "json"
    events: tuple[Kind, ...] = Field(KINDS, description="which messages this channel receives")
    routing_key: str | None = Field(None, description="PagerDuty integration key (format: pagerduty)")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every message")
    retries: int = Field(3, ge=0, le=10, description="attempts after the first")
    backoff_s: float = Field(0.5, gt=0, description="first wait between attempts; doubles each time")
    timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://hooks.slack.com/services/T/B/X")
        return url

    @model_validator(mode="after")
    def _routing_key(self) -> Channel:
        if self.format == "pagerduty" and not self.routing_key:
            raise ValueError("a pagerduty channel needs routing_key (the integration key of its service)")
        return self


@dataclass(frozen=True)
class Message:
    """What happened, independent of any channel's format."""

    kind: str
    decision: dict[str, Any]  # the decision's journal row
    details: dict[str, Any]  # approval and evidence, or the reason / verification detail
    link: str | None = None

    @property
    def summary(self) -> str:
        d = self.decision
        what = f"{TITLES[self.kind]}: {d['action']} on {d['target']}"
        what += f" ({d['policy']}/{d['rule']}, risk {d['risk']})"
        why = self.details.get("reason") or self.details.get("detail")
        if self.kind == "approval_requested":
            return f"{what}, expires {_iso(self.details['expires_ts'])}"
        return f"{what}: {why}" if why else what


def evidence(journal: Journal, decision: dict[str, Any]) -> dict[str, Any]:
    """Why the policy decided: the triggering event's score against its threshold, its strongest
    features (|z| from the service's recent normal), its time (``event_ts``, the data's clock),
    the input window its features were computed over and its diagnosis (fault kind, probability,
    root, victims and the root's evidence)."""
    event = journal.event(decision.get("event_id") or "") or {}
    payload = event.get("payload") or {}
    return {
        "event_id": event.get("id"),
        "score": event.get("score"),
        "threshold": event.get("threshold"),
        "features": [list(f) for f in payload.get("features") or ()],
        "event_ts": payload.get("ts"),
        "window_start": event.get("window_start", decision.get("window_start")),
        "window_end": event.get("window_end", decision.get("window_end")),
        "diagnosis": (decision.get("spec") or {}).get("diagnosis"),
    }


def approval_request(journal: Journal, approval_id: str, link_base: str | None) -> Message | None:
    """The message for a pending approval request: the request, the decision and its evidence."""
    approval = journal.approval(approval_id)
    decision = journal.decision(approval["decision_id"]) if approval else None
    if approval is None or decision is None:
        return None
    details = {
        "approval_id": approval_id,
        "expires_ts": approval["expires_ts"],
        "approvers": approval.get("allowed_approvers") or [],
        "params": decision.get("params") or {},
        "evidence": evidence(journal, decision),
    }
    link = f"{link_base}/approvals#{approval_id}" if link_base else None  # the console's queue
    return Message("approval_requested", decision, details, link)


# ------------------------------------------------------------------ bodies, one per format
def generic(m: Message) -> dict[str, Any]:
    d = m.decision
    return {
        "kind": m.kind,
        "summary": m.summary,
        "decision_id": d["id"],
        "service": d["service"],
        "target": d["target"],
        "policy": d["policy"],
        "rule": d["rule"],
        "action": d["action"],
        "risk": d["risk"],
        "link": m.link,
        **m.details,
    }


def slack(m: Message) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` for notifications, blocks for the channel."""
    d = m.decision
    lines = [
        f"*{TITLES[m.kind]}*: `{d['action']}` on `{d['target']}`",
        f"policy `{d['policy']}` rule `{d['rule']}`, risk *{d['risk']}*",
    ]
    ev = m.details.get("evidence")
    if ev and ev.get("score") is not None:
        top = ", ".join(f"{name} (|z| {z:g})" for name, z in ev["features"])
        score = f"score {ev['score']:.3f} against threshold {ev['threshold']:.3f}"
        lines.append(f"{score}; {top}" if top else score)
    if m.kind == "approval_requested":
        who = ", ".join(m.details["approvers"]) or "any approver"
        lines.append(f"approvers: {who}; expires {_iso(m.details['expires_ts'])}")
    else:
        lines.append(str(m.details.get("reason") or m.details.get("detail") or ""))
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if m.link:
        button = {"type": "button", "text": {"type": "plain_text", "text": "Open the request"}, "url": m.link}
        blocks.append({"type": "actions", "elements": [button]})
    return {"text": m.summary, "blocks": blocks}


def pagerduty(m: Message, routing_key: str) -> dict[str, Any]:
    """An Events API v2 ``trigger``; one incident per decision and kind (``dedup_key``)."""
    d = m.decision
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": f"selfheal:{d['id']}:{m.kind}",
        "client": "selfheal",
        "payload": {
            "summary": m.summary[:1024],
            "source": d["target"],
            "severity": "warning" if m.kind == "approval_requested" else "error",
            "component": d["service"],
            "group": d["policy"],
            "class": m.kind,
            "custom_details": generic(m),
        },
    }
    if m.link:
        body["client_url"] = m.link
        body["links"] = [{"href": m.link, "text": "Open the request"}]
    return body


def body_for(channel: Channel, m: Message) -> dict[str, Any]:
    if channel.format == "slack":
        return slack(m)
    if channel.format == "pagerduty":
        assert channel.routing_key is not None  # the model requires it
        return pagerduty(m, channel.routing_key)
    return generic(m)


# ------------------------------------------------------------------ sending
class _Refused(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Notifier:
    """Turns the engine's notes into messages and sends them, in a thread of its own (module doc)."""

    def __init__(self, channels: Sequence[Channel], journal: Journal, *, link_base: str | None) -> None:
        self.channels = list(channels)
        self.journal = journal
        self.link_base = link_base.rstrip("/") if link_base else None
        self._queue: queue.Queue[tuple[str, Channel, str, dict[str, Any]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client()

    def hear(self, kind: str, data: dict[str, Any]) -> None:
        """A listener of the engine's notes: journal what a channel wants as pending, queue it."""
        wanted = [c for c in self.channels if kind in c.events]
        if not wanted:
            return
        rows = [(c.name, kind, data.get("decision_id"), data) for c in wanted]
        for nid, channel in zip(self.journal.queue_notifications(rows), wanted, strict=True):
            self._queue.put((nid, channel, kind, data))

    def start(self) -> None:
        """Queue the messages an earlier run left pending, then start sending."""
        if not self.channels or self._thread is not None:
            return
        by_name = {c.name: c for c in self.channels}
        for row in self.journal.pending_notifications():
            channel = by_name.get(row["channel"])
            if channel is None:  # the config dropped the channel since: say so rather than wait forever
                self.journal.settle_notification(
                    row["id"],
                    status="dead",
                    attempts=0,
                    error="channel no longer configured",
                    body=row["body"],
                )
                continue
            self._queue.put((row["id"], channel, row["kind"], row["body"]))
        self._thread = threading.Thread(target=self._loop, name="selfheal-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Send what was queued (a failing receiver is no longer retried), then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=timeout / 2)
        self._stop.set()  # retries give up: what still fails is dead-lettered
        self._thread.join(timeout=timeout / 2)
        self._client.close()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            nid, channel, kind, data = item
            try:
                message = self.message(kind, data)
                if message is None:
                    self.journal.settle_notification(
                        nid, status="dead", attempts=0, error="its decision is not in the journal", body=data
                    )
                else:
                    self.send(channel, message, nid)
            except Exception:  # one bad note never stops the others
                log.exception("notification of %s failed", kind)

    def message(self, kind: str, data: dict[str, Any]) -> Message | None:
        if kind == "approval_requested":
            return approval_request(self.journal, data["approval_id"], self.link_base)
        decision = self.journal.decision(data["decision_id"])
        if decision is None:
            return None
        details = {"reason": data["reason"]} if kind == "escalated" else {"detail": data.get("detail")}
        return Message(kind, decision, details)

    def send(self, channel: Channel, m: Message, notification_id: str | None = None) -> bool:
        """POST the message with retries; journal it as sent or dead. True when it was delivered.

        ``notification_id``: its pending row (``hear``); a message sent directly is journaled here."""
        body = body_for(channel, m)
        content = json.dumps(body, separators=(",", ":")).encode()
        if notification_id is None:
            (notification_id,) = self.journal.queue_notifications(
                [(channel.name, m.kind, m.decision["id"], {})]
            )
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification_id, **channel.headers}
        attempts = 0

        def post() -> None:
            nonlocal attempts
            attempts += 1
            try:
                r = self._client.post(
                    channel.url, content=content, headers=headers, timeout=channel.timeout_s
                )
            except httpx.HTTPError as exc:
                raise _Refused(f"{type(exc).__name__}: {exc}", transient=True) from exc
            if r.status_code >= 300:
                transient = r.status_code in TRANSIENT_STATUSES
                raise _Refused(f"HTTP {r.status_code}: {r.text[:200]}", transient=transient)

        retrying = Retrying(
            stop=stop_after_attempt(channel.retries + 1) | stop_when_event_set(self._stop),
            wait=wait_exponential(multiplier=channel.backoff_s, max=60),
            retry=retry_if_exception(lambda e: isinstance(e, _Refused) and e.transient),
            sleep=self._stop.wait,
        )
        error = None
        try:
            retrying(post)
        except RetryError as exc:
            error = str(exc.last_attempt.exception())
        except _Refused as exc:
            error = str(exc)
        fields = {"decision_id": m.decision["id"], "service": m.decision["service"], "channel": channel.name}
        if error is None:
            log.info("%s sent to %s", m.kind, channel.name, extra=fields)
        else:
            log.error(
                "%s to %s dead after %d attempt(s): %s", m.kind, channel.name, attempts, error, extra=fields
            )
        self.journal.settle_notification(
            notification_id,
            status="sent" if error is None else "dead",
            attempts=attempts,
            error=error,
            body=body,
        )
        return error is None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
