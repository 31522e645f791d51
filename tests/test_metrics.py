"""What an operator charts and reads: the engine's /metrics, the Grafana dashboard in the repository,
structured JSON logs and the OpenAPI page, against a real engine on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO
from prometheus_client.parser import text_string_to_metric_families
from test_runtime_support import TOKEN, AdminServer, push_anomaly, serving, wait_for, write_rules

from engine.cli import configure_logging
from engine.records import DIAGNOSIS_KINDS, Diagnosis
from engine.runtime.metrics import EngineMetrics, EngineState

DASHBOARD = REPO / "dashboards" / "selfheal.json"
SELECTOR_LABELS = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")
BY_LABELS = re.compile(r"\bby\s*\(([^)]*)\)")


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(text: str, name: str, **labels: str) -> float:
    found = [v for got, v in samples(text).get(name, []) if all(got.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture
def engine_url(tmp_path: Path) -> Iterator[tuple[str, AdminServer]]:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        with serving(rules, tmp_path / "journals", approver_tokens={"alice": "alice-token-5678"}) as running:
            yield running.url, admin


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's ``--json-logs`` set-up, undone afterwards (it configures the root logger)."""
    root, ours = logging.getLogger(), logging.getLogger("engine")
    saved = root.handlers[:], root.level, ours.level
    for name in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.setenv(name, os.environ.get(name, "WARNING" if "LEVEL" in name else "false"))
    configure_logging("INFO", json_logs=True, server=True)
    yield
    root.handlers[:], ours.level = saved[0], saved[2]
    root.setLevel(saved[1])


def test_metrics_chart_services_approvals_actions_and_the_kill_switch(
    engine_url: tuple[str, AdminServer], json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = engine_url
    started = time.time()
    push_anomaly(url, vector_db=True, inference_a=True)  # vector-db waits for approval; inference-a restarts
    wait_for(lambda: admin.calls("/admin/restart"))
    wait_for(lambda: "selfheal_actions_total{" in httpx.get(f"{url}/metrics").text)
    text = wait_for(
        lambda: (t := httpx.get(f"{url}/metrics").text) and value(t, "selfheal_approvals_pending") == 1 and t
    )
    assert value(text, "selfheal_paused") == 0
    age = value(text, "selfheal_approval_oldest_age_seconds")
    assert 0 < age <= time.time() - started + 1
    vector = value(text, "selfheal_service_score", service="vector-db")
    assert vector > value(text, "selfheal_service_threshold", service="vector-db")
    assert value(text, "selfheal_service_anomalous", service="vector-db") == 1
    assert value(text, "selfheal_service_anomalous", service="feature-store") == 0
    assert value(text, "selfheal_service_score", service="feature-store") < vector
    assert 0 <= value(text, "selfheal_service_score_age_seconds", service="gateway") < 30
    diagnosed = {
        labels["service"]: (labels, p) for labels, p in samples(text)["selfheal_diagnosis_probability"]
    }
    anomalous = {got["service"] for got, v in samples(text)["selfheal_service_anomalous"] if v == 1}
    assert set(diagnosed) == anomalous and "vector-db" in anomalous  # healthy services have none
    labels, p = diagnosed["vector-db"]
    assert labels["kind"] in DIAGNOSIS_KINDS and labels["role"] in ("root", "victim") and 0 < p <= 1
    info = samples(text)["selfheal_bundle_info"][0][0]
    assert info["bundle_version"] == "dev" and info["detector"] == "IForest" and info["policy_version"]
    restarted = dict(policy="platform", action="restart", kind="action", outcome="succeeded")
    assert value(text, "selfheal_actions_total", **restarted) == 1

    assert httpx.post(f"{url}/v1/pause", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert value(httpx.get(f"{url}/metrics").text, "selfheal_paused") == 1

    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (done,) = [r for r in logs if r.get("action") == "restart" and "succeeded" in r["message"]]
    decision = httpx.get(f"{url}/v1/decisions", params={"service": "inference-a"}).json()[0]
    assert done["decision_id"] == decision["id"] and done["service"] == "inference-a"
    assert done["policy"] == "platform" and done["levelname"] == "INFO"


def test_failed_verification_is_counted_by_policy_and_action(engine_url: tuple[str, AdminServer]) -> None:
    url, _ = engine_url
    push_anomaly(url, feature_store=True)  # scale; its steady state (score < 0.5 within 1 s) never comes
    failed = dict(policy="platform", action="scale", outcome="failed")
    text = wait_for(
        lambda: (t := httpx.get(f"{url}/metrics").text) and "selfheal_verifications_total{" in t and t
    )
    assert value(text, "selfheal_verifications_total", **failed) == 1
    assert 'outcome="verified"' not in text


def _exported(metrics: EngineMetrics) -> tuple[set[str], set[str]]:
    """Every sample name the engine can export, and every label it uses."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    labels = {
        label for series in samples(metrics.render().decode()).values() for got, _ in series for label in got
    }
    return names, labels


DEPLOY = Diagnosis(
    kind="bad_deploy", probability=0.9, root="svc", victims=("gw",), evidence=(("error_rate", 6.5),)
)


def test_the_diagnosis_gauges_name_kind_role_and_root_while_a_service_is_anomalous() -> None:
    now = time.time()
    victim = DEPLOY.model_copy(update={"role": "victim"})
    old = DEPLOY.model_copy(update={"kind": "memory_leak", "root": "db"})
    state = EngineState(
        0,
        False,
        0,
        None,
        0.7,
        {s: (0.9, now) for s in ("svc", "gw", "db")},
        {"svc": True, "gw": True, "db": False},  # db recovered: its diagnosis is history
        {},
        {"svc": DEPLOY, "gw": victim, "db": old},
    )
    got = samples(EngineMetrics(lambda: state).render().decode())
    assert sorted((labels["service"], labels["role"], labels["root"], labels["kind"], v)
                  for labels, v in got["selfheal_diagnosis_probability"]) == [
        ("gw", "victim", "svc", "bad_deploy", 0.9),
        ("svc", "root", "svc", "bad_deploy", 0.9),
    ]  # fmt: skip
    assert got["selfheal_diagnosis_evidence"] == [({"service": "svc", "metric": "error_rate"}, 6.5)]


def test_the_dashboard_charts_only_metrics_the_engine_exports() -> None:
    state = EngineState(
        3,
        False,
        1,
        time.time() - 5,
        0.7,
        {"svc": (0.9, time.time())},
        {"svc": True},
        {"a": "b"},
        {"svc": DEPLOY},
    )
    metrics = EngineMetrics(lambda: state)
    data: dict[str, Any] = {"policy": "p", "action": "a", "kind": "action", "decision_id": "d"}
    for note in ("executed", "action_failed", "verified", "verification_failed", "duplicate"):
        metrics.count(note, data)
    metrics.count("blocked", {"safeguard": "cooldown"})
    metrics.count("policy_error", {})
    metrics.points_in.labels("http").inc()
    metrics.points_rejected.labels("http", "value").inc()
    metrics.scrape_errors.labels("http://x").inc()
    metrics.anomalies.labels("svc").inc()
    names, labels = _exported(metrics)
    labels |= {"le"}

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 15
    used = {m for e in exprs for m in re.findall(r"\bselfheal_[a-z0-9_]+", e)}
    assert used - names == set(), f"the dashboard charts metrics the engine does not export: {used - names}"
    grouped = {x.strip() for e in exprs for g in BY_LABELS.findall(e) for x in g.split(",")}
    selected = {x for e in exprs for x in SELECTOR_LABELS.findall(e)}
    assert (grouped | selected) - labels == set()
    for wanted in (
        "selfheal_service_score",
        "selfheal_service_threshold",
        "selfheal_service_anomalous",
        "selfheal_paused",
        "selfheal_bundle_info",
        "selfheal_approvals_pending",
        "selfheal_approval_oldest_age_seconds",
        "selfheal_actions_total",
        "selfheal_verifications_total",
        "selfheal_diagnosis_probability",
        "selfheal_diagnosis_evidence",
    ):
        assert wanted in used, f"the dashboard does not chart {wanted}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_check_catches_a_metric_that_does_not_exist() -> None:
    """The check above can fail: a misspelt name is not among the exported ones."""
    names, _ = _exported(EngineMetrics(lambda: EngineState(0, False, 0, None, 1.0, {}, {}, {})))
    assert "selfheal_service_score" in names and "selfheal_actions_total" in names
    assert "selfheal_service_scores" not in names and "selfheal_actions" not in names


def test_openapi_describes_the_api(engine_url: tuple[str, AdminServer]) -> None:
    url, _ = engine_url
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/approvals/{approval_id}/approve" in schema["paths"]
    assert "/v1/telemetry" in schema["paths"]
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
