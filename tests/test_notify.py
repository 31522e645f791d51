"""Notifications reach people: approval requests, escalations and failed verifications go to the
webhooks of the engine config, as generic JSON, Slack and PagerDuty Events v2 bodies, with retries
and a dead-letter record in the journal. A receiver on 127.0.0.1 records exactly what arrived."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from test_runtime_support import AdminServer, push_anomaly, serving, wait_for, write_rules
from typer.testing import CliRunner

from engine.errors import SpecError
from engine.runtime.commands import register
from engine.runtime.config import load_settings
from engine.runtime.journal import Journal
from engine.runtime.notify import Channel, Message, Notifier

ALICE = "alice-token-5678"


class Receiver:
    """Records every POST (path, headers, JSON body); answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with owner.lock:
                    owner.received.append(
                        {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                    )
                    status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def channels(url: str) -> list[dict[str, Any]]:
    return [
        {"name": "ops", "url": f"{url}/json", "backoff_s": 0.01},
        {"name": "chat", "url": f"{url}/slack", "format": "slack", "events": ["approval_requested"]},
        {
            "name": "pager",
            "url": f"{url}/pd",
            "format": "pagerduty",
            "routing_key": "R0UT1NGKEY",
            "events": ["approval_requested", "escalated"],
        },
    ]


def test_an_approval_request_reaches_every_channel_with_its_evidence_and_link(
    tmp_path: Path, receiver: Receiver
) -> None:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        settings = {"approver_tokens": {"alice": ALICE}, "notifications": channels(receiver.url)}
        settings["public_url"] = "https://selfheal.example/"
        with serving(rules, tmp_path / "journals", **settings) as running:
            push_anomaly(running.url, vector_db=True)
            (pending,) = wait_for(lambda: httpx.get(f"{running.url}/v1/approvals").json())
            (got,) = wait_for(lambda: receiver.at("/json"))
            (chat,) = wait_for(lambda: receiver.at("/slack"))
            (pd,) = wait_for(lambda: receiver.at("/pd"))
            request = httpx.get(f"{running.url}/v1/approvals/{pending['id']}").json()
            wait_for(lambda: len(running.engine.journal.recent("notifications", status="sent")) == 3)
            sent = running.engine.journal.recent("notifications")
            event = running.engine.journal.event(request["decision"]["event_id"])

    decision, ev = request["decision"], request["evidence"]
    assert event is not None and ev["score"] == event["score"] > ev["threshold"] == event["threshold"]
    assert [tuple(f) for f in ev["features"]] == [tuple(f) for f in event["payload"]["features"]]
    assert ev["features"] and ev["window_start"] < ev["window_end"]
    link = f"https://selfheal.example/approvals#{pending['id']}"
    expires = request["expires_ts"]
    expires_iso = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = (
        f"Approval needed: rollback_model on vector-db (platform/{decision['rule']}, risk high), "
        f"expires {expires_iso}"
    )
    generic = {
        "kind": "approval_requested",
        "summary": summary,
        "decision_id": decision["id"],
        "service": "vector-db",
        "target": "vector-db",
        "policy": "platform",
        "rule": decision["rule"],
        "action": "rollback_model",
        "risk": "high",
        "link": link,
        "approval_id": pending["id"],
        "expires_ts": expires,
        "approvers": ["alice"],
        "params": decision["params"],
        "evidence": ev,
    }
    assert got["body"] == generic
    (ops,) = [n for n in sent if n["channel"] == "ops"]
    assert got["headers"]["Idempotency-Key"] == ops["id"]  # its journal row: stable across a restart
    top = ", ".join(f"{name} (|z| {z:g})" for name, z in ev["features"])
    assert chat["body"] == {
        "text": summary,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Approval needed*: `rollback_model` on `vector-db`\n"
                    f"policy `platform` rule `{decision['rule']}`, risk *high*\n"
                    f"score {ev['score']:.3f} against threshold {ev['threshold']:.3f}; {top}\n"
                    f"approvers: alice; expires {expires_iso}",
                },
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open the request"},
                        "url": link,
                    }
                ],
            },
        ],
    }
    assert pd["body"] == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "trigger",
        "dedup_key": f"selfheal:{decision['id']}:approval_requested",
        "client": "selfheal",
        "client_url": link,
        "links": [{"href": link, "text": "Open the request"}],
        "payload": {
            "summary": summary,
            "source": "vector-db",
            "severity": "warning",
            "component": "vector-db",
            "group": "platform",
            "class": "approval_requested",
            "custom_details": generic,
        },
    }
    assert sorted((n["channel"], n["status"], n["attempts"]) for n in sent) == [
        ("chat", "sent", 1),
        ("ops", "sent", 1),
        ("pager", "sent", 1),
    ]


def test_a_failed_verification_and_its_escalation_reach_their_channels(
    tmp_path: Path, receiver: Receiver
) -> None:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        with serving(rules, tmp_path / "journals", notifications=channels(receiver.url)) as running:
            push_anomaly(running.url, feature_store=True)  # scale; verify (score < 0.5 in 1 s) fails
            got = wait_for(lambda: len(receiver.at("/json")) >= 2 and receiver.at("/json"))
            (paged,) = wait_for(lambda: receiver.at("/pd"))
    by_kind = {r["body"]["kind"]: r["body"] for r in got}
    failed, escalated = by_kind["verification_failed"], by_kind["escalated"]
    assert failed["action"] == "scale" and failed["service"] == "feature-store" and failed["link"] is None
    assert failed["summary"].startswith("Verification failed: scale on feature-store (platform/")
    assert failed["detail"] and "score" in failed["detail"]
    assert (
        escalated["reason"].startswith("verification failed: ")
        and escalated["decision_id"] == failed["decision_id"]
    )
    assert (
        paged["body"]["payload"]["class"] == "escalated" and paged["body"]["payload"]["severity"] == "error"
    )
    assert receiver.at("/slack") == []  # that channel wants approval requests only


def test_a_message_queued_when_the_engine_died_is_sent_after_the_restart(tmp_path: Path) -> None:
    """The notifier journals a message as pending before it is sent: an engine that dies with it
    queued (here: the first notifier never starts, its memory is gone) sends it on the next start,
    under the same Idempotency-Key; a message for a channel the config dropped since is dead."""
    receiver = Receiver()
    ops = Channel(name="ops", url=f"{receiver.url}/x", backoff_s=0.01)
    old = Channel(name="old", url=f"{receiver.url}/old", backoff_s=0.01)
    try:
        with Journal(tmp_path / "j.sqlite") as journal:
            decision_id = journal.record_decision(
                {"service": "svc", "policy": "p", "rule": "r", "action": "restart"}, status="failed"
            )
            Notifier([ops, old], journal, link_base=None).hear(
                "escalated", {"decision_id": decision_id, "reason": "action failed: boom"}
            )
            pending = journal.pending_notifications()
        assert receiver.received == [] and {p["channel"] for p in pending} == {"ops", "old"}
        with Journal(tmp_path / "j.sqlite") as journal:  # the restarted engine
            restarted = Notifier([ops], journal, link_base=None)
            restarted.start()
            (got,) = wait_for(lambda: receiver.at("/x"))
            restarted.stop(5.0)
            rows = {r["channel"]: r for r in journal.recent("notifications")}
    finally:
        receiver.close()
    assert got["body"]["reason"] == "action failed: boom" and got["body"]["decision_id"] == decision_id
    assert got["headers"]["Idempotency-Key"] == rows["ops"]["id"]
    assert rows["ops"]["status"] == "sent" and rows["ops"]["body"] == got["body"]
    assert rows["old"]["status"] == "dead" and rows["old"]["error"] == "channel no longer configured"
    assert receiver.at("/old") == []


def _message(journal: Journal) -> Message:
    decision = {
        "id": "dec-1",
        "service": "svc",
        "target": "svc",
        "policy": "p",
        "rule": "r",
        "action": "restart",
        "risk": "low",
    }
    return Message("escalated", decision, {"reason": "action failed: boom"})


def test_a_receiver_that_fails_twice_gets_the_message_once_it_recovers(tmp_path: Path) -> None:
    receiver = Receiver([503, 502])
    try:
        with Journal(tmp_path / "j.sqlite") as journal:
            channel = Channel(name="ops", url=f"{receiver.url}/x", retries=3, backoff_s=0.01)
            assert Notifier([channel], journal, link_base=None).send(channel, _message(journal))
            (row,) = journal.recent("notifications")
    finally:
        receiver.close()
    assert len(receiver.received) == 3
    assert {json.dumps(r["body"], sort_keys=True) for r in receiver.received} == {
        json.dumps(receiver.received[0]["body"], sort_keys=True)
    }  # the same body each time
    assert row["status"] == "sent" and row["attempts"] == 3 and row["error"] is None


@pytest.mark.parametrize(("statuses", "attempts"), [([500] * 5, 3), ([400], 1)])
def test_an_undeliverable_message_is_journaled_dead_with_its_body(
    tmp_path: Path, statuses: list[int], attempts: int
) -> None:
    """A receiver that keeps failing is retried ``retries`` times; a refusal (4xx) is not retried."""
    receiver = Receiver(statuses)
    try:
        with Journal(tmp_path / "j.sqlite") as journal:
            channel = Channel(name="ops", url=f"{receiver.url}/x", retries=2, backoff_s=0.01)
            message = _message(journal)
            assert not Notifier([channel], journal, link_base=None).send(channel, message)
            (row,) = journal.recent("notifications", status="dead")
    finally:
        receiver.close()
    assert len(receiver.received) == attempts and row["attempts"] == attempts
    app = typer.Typer()
    register(app)
    listed = CliRunner().invoke(
        app,
        ["journal", "--journal", str(tmp_path / "j.sqlite"), "--kind", "notifications", "--status", "dead"],
    )
    assert (
        f"dead  escalated to ops  decision dec-1  attempts {attempts}  error: HTTP {statuses[0]}"
        in listed.output
    )
    assert (
        f"HTTP {statuses[0]}" in row["error"] and row["kind"] == "escalated" and row["decision_id"] == "dec-1"
    )
    assert row["body"] == receiver.received[0]["body"] and row["body"]["reason"] == "action failed: boom"


def test_an_unreachable_receiver_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    receiver = Receiver()
    url = f"{receiver.url}/x"
    receiver.close()  # nothing listens there now
    with Journal(tmp_path / "j.sqlite") as journal:
        channel = Channel(name="ops", url=url, retries=1, backoff_s=0.01, timeout_s=2)
        assert not Notifier([channel], journal, link_base=None).send(channel, _message(journal))
        (row,) = journal.recent("notifications", status="dead")
    assert row["attempts"] == 2 and "ConnectError" in row["error"]


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        (
            {"name": "p", "url": "http://x", "format": "pagerduty"},
            "notifications[0]: a pagerduty channel needs routing_key",
        ),
        ({"name": "s", "url": "hooks.slack.com/x"}, "notifications[0].url: must be an http(s) URL"),
        ({"name": "s", "url": "http://x", "events": ["approved"]}, "notifications[0].events[0]"),
    ],
)
def test_a_bad_channel_is_refused_at_start_naming_its_field(channel: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_settings(overrides={"notifications": [channel]}, environ={})
    assert message in str(caught.value)
