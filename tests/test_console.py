"""The operator's console against a real engine on 127.0.0.1: pages, auth (session cookie, CSRF),
live updates over server-sent events, and approving through the form, in headless Chromium
(Debian's chromium driven by Playwright). Screenshots land in the test's tmp_path (or in
SELFHEAL_TEST_ARTEFACTS when set)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import screenshot
from test_runtime_support import TOKEN, AdminServer, push_anomaly, serving, wait_for, write_rules

ALICE = "alice-token-5678"
BOB = "bob-token-90123"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Any, AdminServer]]:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        tokens = {"alice": ALICE, "bob": BOB}
        with serving(rules, tmp_path / "journals", approver_tokens=tokens, verify_interval_s=0.05) as running:
            yield running, admin


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _signed_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url)
    csrf = _csrf(client.get("/login").text)
    r = client.post("/login", data={"token": token, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/approvals"
    return client


def test_every_page_loads_read_only_under_a_strict_content_security_policy(
    engine: tuple[Any, AdminServer],
) -> None:
    running, _ = engine
    push_anomaly(running.url, feature_store=True, vector_db=True)
    wait_for(lambda: httpx.get(f"{running.url}/v1/approvals").json())
    for path in ("/", "/approvals", "/control", "/journal?kind=control", "/services/vector-db", "/login"):
        r = httpx.get(f"{running.url}{path}")
        assert r.status_code == 200, (path, r.text[:300])
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "style-src 'self'" in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), f"{path}: an inline script"
        assert not re.search(r"\son\w+=", r.text) and " style=" not in r.text, f"{path}: inline handler/style"
    services = httpx.get(f"{running.url}/").text
    assert 'data-service="vector-db"' in services and "anomalous" in services
    queue = httpx.get(f"{running.url}/approvals").text
    assert "rollback_model on vector-db" in queue and "risk high" in queue and "alice" in queue
    assert 'class="approve"' not in queue and 'id="read-only"' in queue  # read-only: no buttons
    timeline = httpx.get(f"{running.url}/services/vector-db").text
    assert timeline.index("<strong>event</strong>") < timeline.index("<strong>decision</strong>")
    assert "awaiting_approval" in timeline


def test_sign_in_sets_a_strict_http_only_cookie_and_forms_need_the_csrf_token(
    engine: tuple[Any, AdminServer],
) -> None:
    running, _ = engine
    client = httpx.Client(base_url=running.url)
    csrf = _csrf(client.get("/login").text)
    bad = client.post("/login", data={"token": "not-a-token-000", "csrf": csrf}, follow_redirects=True)
    assert "that token is not valid" in bad.text
    assert client.post("/login", data={"token": ALICE}).status_code == 403  # no CSRF token
    r = client.post("/login", data={"token": ALICE, "csrf": _csrf(client.get("/login").text)})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and ALICE.lower() not in cookie
    page = client.get("/control").text
    assert 'id="who">alice<' in page and 'id="switch-form"' in page
    forged = client.post("/control/pause", data={"reason": "forged"})  # the session's cookie, no token
    assert forged.status_code == 403 and httpx.get(f"{running.url}/v1/status").json()["paused"] is False
    wrong = client.post("/control/pause", data={"reason": "forged", "csrf": csrf})  # the old session's
    assert wrong.status_code == 403
    paused = client.post("/control/pause", data={"reason": "drill", "csrf": _csrf(page)})
    assert paused.status_code == 303 and httpx.get(f"{running.url}/v1/status").json()["paused"] is True
    control = client.get("/control").text
    assert "set by alice" in control and "drill" in control and 'id="paused-badge"' in control
    anonymous = httpx.post(f"{running.url}/control/resume", data={"reason": "x", "csrf": "x"})
    assert anonymous.status_code == 403


def test_modes_change_from_the_console_and_are_journaled(engine: tuple[Any, AdminServer]) -> None:
    running, _ = engine
    client = _signed_in(running.url, BOB)
    csrf = _csrf(client.get("/control").text)
    r = client.post(
        "/modes", data={"policy": "platform", "mode": "observe", "reason": "new team", "csrf": csrf}
    )
    assert r.status_code == 303
    assert httpx.get(f"{running.url}/v1/modes").json()["modes"] == {"platform": "observe"}
    page = client.get("/control").text
    assert (
        "mode:platform = &#34;observe&#34; by bob: new team" in page
        or 'mode:platform = "observe" by bob' in page
    )
    shared = _signed_in(running.url, TOKEN)
    refused = shared.post(
        "/modes", data={"policy": "platform", "mode": "auto", "csrf": _csrf(shared.get("/control").text)}
    )
    assert refused.status_code == 403 and "approver&#39;s own token" in refused.text
    assert '<a id="back" href="/control">' in refused.text  # back to the form's page


def test_an_incident_reads_in_order_from_anomaly_to_rollback(engine: tuple[Any, AdminServer]) -> None:
    running, _ = engine
    push_anomaly(running.url, feature_store=True)  # scale; its verification fails: escalate, roll back
    journal = running.engine.journal
    wait_for(lambda: len(journal.recent("executions", service="feature-store")) == 3, timeout=20)
    (decision,) = journal.recent("decisions", service="feature-store")
    wait_for(lambda: f'href="/incidents/{decision["id"]}"' in httpx.get(f"{running.url}/services/table").text)
    services = httpx.get(f"{running.url}/").text
    row = services.split('data-service="feature-store"')[1].split("</tr>")[0]
    assert re.search(r"last action \d+ s ago, 1 in the hour", row), row
    assert re.search(r"actions in the last hour <strong>1</strong> of 30", services), services[:3000]
    page = httpx.get(f"{running.url}/incidents/{decision['id']}").text
    steps = re.findall(r"<strong>(\w+)</strong>\s*([^<\n]*)", page.split('id="incident"')[1])
    kinds = [k for k, _ in steps]
    assert kinds[0] == "event" and kinds[kinds.index("decision") :] == [
        "decision", "execution", "verification", "execution", "execution"
    ], steps  # fmt: skip
    done = [what.split()[0] + " " + what.split()[1] for k, what in steps if k == "execution"]
    assert done[0] == "action scale" and sorted(done[1:]) == ["escalation webhook", "rollback scale"]
    assert "failed" in dict(steps)["verification"]
    assert httpx.get(f"{running.url}/incidents/dec-none").status_code == 404


def _diagnosis_shown(html: str) -> tuple[str, str, list[str]]:
    """The kind, role and evidence metrics of the first diagnosis in ``html``."""
    found = re.search(r'class="diagnosis" data-kind="(\w+)" data-role="(\w+)">(.*?)</div>', html, re.S)
    assert found, html[:2000]
    return found.group(1), found.group(2), re.findall(r'data-metric="([^"]+)"', found.group(3))


def test_the_services_view_and_the_approval_show_the_diagnosis(engine: tuple[Any, AdminServer]) -> None:
    running, _ = engine
    push_anomaly(running.url, vector_db=True)
    (pending,) = wait_for(lambda: running.engine.journal.pending_approvals())
    diagnosis = running.engine.diagnoses["vector-db"]
    row = httpx.get(f"{running.url}/").text.split('data-service="vector-db"')[1].split("</tr>")[0]
    kind, role, metrics = _diagnosis_shown(row)
    assert (kind, role) == (diagnosis.kind, diagnosis.role)
    assert f"p {diagnosis.probability:.2f}" in row
    if diagnosis.role == "root":
        assert metrics == [name for name, _ in diagnosis.evidence]
    else:
        assert f'victim of <a href="/services/{diagnosis.root}">' in row
    healthy = httpx.get(f"{running.url}/").text.split('data-service="gateway"')[1].split("</tr>")[0]
    assert 'class="diagnosis"' not in healthy  # a healthy service has nothing to diagnose

    decided = running.engine.journal.decision(pending["decision_id"])["spec"]["diagnosis"]
    card = httpx.get(f"{running.url}/approvals/list").text
    kind, role, metrics = _diagnosis_shown(card.split(f'id="{pending["id"]}"')[1])
    assert (kind, role) == (decided["kind"], decided["role"]) and f"p {decided['probability']:.2f}" in card
    assert metrics == [name for name, _ in decided["evidence"]]
    for name, z in decided["evidence"]:
        assert f"{name} <meter" in card and f"z {z:+.1f}" in card
    event = running.engine.journal.event(running.engine.journal.decision(pending["decision_id"])["event_id"])
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["payload"]["ts"]))
    assert f"anomaly at {when}" in card  # the event's own time, not its features' 4-hour window


def test_a_diagnosis_reads_the_same_from_the_engine_and_from_the_journal() -> None:
    """The services view shows the engine's Diagnosis, the approval and incident its journaled JSON."""
    from jinja2 import Environment, FileSystemLoader

    from engine.records import Diagnosis
    from engine.runtime.console.pages import HERE

    macro = (
        Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
        .get_template("macros.html")
        .module.diagnosis
    )  # type: ignore[attr-defined]
    root = Diagnosis(
        kind="bad_deploy",
        probability=0.8734,
        root="vector-db",
        victims=("gateway", "rag-api"),
        evidence=(("error_rate", 7.25), ("precision_at_k", -4.5), ("latency_p99_ms", 14.0)),
    )
    html = str(macro(root))
    assert html == str(macro(root.model_dump(mode="json")))
    assert _diagnosis_shown(html) == (
        "bad_deploy",
        "root",
        ["error_rate", "precision_at_k", "latency_p99_ms"],
    )
    assert "bad deploy" in html and "p 0.87" in html and "victims: gateway, rag-api" in html
    assert "z +7.2" in html and "z -4.5" in html and 'value="4.5"' in html and 'value="10"' in html
    victim = str(macro(root.model_copy(update={"role": "victim"})))
    assert 'victim of <a href="/services/vector-db">vector-db</a>' in victim
    assert str(macro(None)).strip() == "-"


def test_an_operator_marks_an_anomaly_a_false_alarm_from_its_incident(
    engine: tuple[Any, AdminServer],
) -> None:
    running, _ = engine
    journal = running.engine.journal
    push_anomaly(running.url, vector_db=True)
    (pending,) = wait_for(lambda: journal.pending_approvals())
    decision = journal.decision(pending["decision_id"])
    event_id, where = decision["event_id"], f"/incidents/{decision['id']}"
    read_only = httpx.get(f"{running.url}{where}").text
    assert f'action="/events/{event_id}/label"' not in read_only and 'data-kind="' in read_only

    alice = _signed_in(running.url, ALICE)
    page = alice.get(where).text
    assert f'action="/events/{event_id}/label"' in page
    form = {"label": "false_alarm", "reason": "load test", "next": where}
    assert alice.post(f"/events/{event_id}/label", data=form).status_code == 403  # no CSRF token
    anonymous = httpx.post(f"{running.url}/events/{event_id}/label", data={**form, "csrf": _csrf(page)})
    assert anonymous.status_code == 403 and journal.control(f"label:{event_id}") is None

    heard: list[tuple[str, dict[str, Any]]] = []
    running.engine.listeners.append(lambda kind, data: heard.append((kind, data)))
    r = alice.post(f"/events/{event_id}/label", data={**form, "csrf": _csrf(page)})
    assert r.status_code == 303 and r.headers["location"] == where
    assert (
        "labeled",
        {"event_id": event_id, "label": "false_alarm", "actor": "alice", "reason": "load test"},
    ) in heard
    row = journal.control(f"label:{event_id}")
    assert (row["value"], row["actor"], row["reason"]) == ("false_alarm", "alice", "load test")
    after = alice.get(where).text
    assert "marked false alarm by alice: load test" in after and f"{event_id} marked false alarm" in after
    timeline = alice.get("/services/vector-db").text
    assert "marked false alarm by alice" in timeline

    csrf = _csrf(after)
    away = alice.post(
        f"/events/{event_id}/label", data={"label": "true_alarm", "next": "//x.example", "csrf": csrf}
    )
    assert away.headers["location"] == "/" and journal.control(f"label:{event_id}")["value"] == "true_alarm"
    missing = alice.post("/events/evt-none/label", data={"label": "true_alarm", "csrf": csrf, "next": where})
    assert missing.status_code == 404 and f'<a id="back" href="{where}">' in missing.text
    bad = alice.post(f"/events/{event_id}/label", data={"label": "maybe", "csrf": csrf})
    assert bad.status_code == 422 and "false_alarm" in bad.text


def test_pages_never_wait_on_the_engines_journal_lock(engine: tuple[Any, AdminServer]) -> None:
    """The journal writer holds the engine's journal lock while it commits; the console reads
    through a connection of its own, so a page is served while the lock is held."""
    running, _ = engine
    push_anomaly(running.url, vector_db=True)
    (pending,) = wait_for(lambda: running.engine.journal.pending_approvals())
    live = running._server.config.app.state.console_live
    with running.engine.journal._lock:
        for topic in ("services", "approvals", "control"):
            live.touch(topic)  # rebuilt now, under the lock
        incident = f"/incidents/{pending['decision_id']}"
        pages = ("/", "/services/table", "/approvals", "/approvals/list", "/services/vector-db")
        for path in (*pages, "/journal?kind=decisions", "/control", incident):
            r = httpx.get(f"{running.url}{path}", timeout=10)
            assert r.status_code == 200, (path, r.text[:300])
        assert pending["id"] in httpx.get(f"{running.url}/approvals/list", timeout=10).text


# ------------------------------------------------------------------ headless Chromium


def test_an_approval_appears_live_and_is_approved_once_through_the_form(
    engine: tuple[Any, AdminServer], browser: Any, tmp_path: Path
) -> None:
    running, admin = engine
    url = running.url
    alice = browser.new_context(base_url=url)
    page = alice.new_page()
    page.goto("/login")
    page.fill("input[name=token]", ALICE)
    page.click("#login button[type=submit]")
    page.wait_for_url(f"{url}/approvals")
    assert page.inner_text("#who") == "alice" and page.inner_text("#no-approvals")
    page.wait_for_selector("body[data-live=open]")
    viewer = browser.new_context(base_url=url).new_page()  # no token: read-only
    viewer.goto("/approvals")
    viewer.wait_for_selector("body[data-live=open]")

    push_anomaly(url, vector_db=True)
    (pending,) = wait_for(lambda: running.engine.journal.pending_approvals())
    page.wait_for_selector(f"article[data-approval={pending['id']}]", timeout=5_000)
    seen = time.time()
    assert seen - pending["created_ts"] < 1.0, (
        f"the request showed {seen - pending['created_ts']:.2f} s after it was made"
    )
    card = page.inner_text(f"#{pending['id']}")
    assert "rollback_model on vector-db" in card and "against threshold" in card and "alice" in card
    left = re.search(r"time left\s+(\d+) s", card)
    assert left and 0 < int(left.group(1)) <= 30, card  # the policy's TTL: 30 s
    viewer.wait_for_selector(f"article[data-approval={pending['id']}]", timeout=5_000)
    assert viewer.locator("button.approve").count() == 0 and viewer.locator("#read-only").count() == 1
    screenshot(page, tmp_path, "approval")
    screenshot(viewer, tmp_path, "read-only")

    csrf = page.get_attribute(f"#{pending['id']} input[name=csrf]", "value")
    forged = alice.request.post(f"/approvals/{pending['id']}/approve", form={"reason": "forged"})
    assert forged.status == 403  # alice's own cookie, no CSRF token
    assert running.engine.journal.approval(pending["id"])["status"] == "pending"

    page.fill(f"#{pending['id']} input[name=reason]", "canary is bad")
    page.click(f"#{pending['id']} button.approve")
    page.wait_for_selector("#flash")
    assert "approved by alice" in page.inner_text("#flash")
    wait_for(lambda: admin.calls("/admin/rollback_model"))
    again = alice.request.post(f"/approvals/{pending['id']}/approve", form={"reason": "again", "csrf": csrf})
    assert again.status == 409 and "already approved" in again.text()
    time.sleep(0.5)
    assert len(admin.calls("/admin/rollback_model")) == 1
    row = running.engine.journal.approval(pending["id"])
    assert row["approver"] == "alice" and row["reason"] == "canary is bad"
    page.goto("/")
    page.wait_for_selector("tr[data-service=vector-db]")
    screenshot(page, tmp_path, "services")


def test_the_sparkline_draws_the_sampled_hour_against_the_threshold_and_marks_the_event() -> None:
    from engine.runtime.console.live import History
    from engine.runtime.console.pages import sparkline

    scores, clock = {"svc": (0.2, 0.0)}, {"svc": 1000.0}
    history = History(lambda: scores, lambda: clock, every_s=30.0)
    for k, score in enumerate((0.2, 0.9, 0.4)):
        scores["svc"], clock["svc"] = (score, 0.0), 1000.0 + 30 * k
        history.sample()
    assert [v for _, v in history.of("svc")] == [0.2, 0.9, 0.4] and history.of("other") == []
    svg = str(sparkline(history.of("svc"), 0.5, w=100, h=20))
    points = re.search(r'points="([^"]+)"', svg).group(1).split()  # type: ignore[union-attr]
    assert [p.split(",")[0] for p in points] == ["1.0", "50.0", "99.0"]
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[1] < ys[2] < ys[0]  # higher scores are drawn higher
    assert 'y1="' in svg and "no history" in str(sparkline(history.of("other")))
    marked = str(sparkline(history.of("svc"), 0.5, mark=1030.0, w=100, h=20))
    assert '<line class="event" x1="50.0"' in marked and "around the event" in marked
    assert 'class="event"' not in str(sparkline(history.of("svc"), 0.5, mark=5000.0))  # off the chart
