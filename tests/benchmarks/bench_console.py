"""The console under a large journal, and its live updates' cost on the journal writer.

- Page render: an engine serving the console on 127.0.0.1 with 10,000 journal entries (anomaly
  events and decisions of 200 services, 50 pending approvals with their evidence), an hour of
  sampled scores per service; each page's request time (HTTP on loopback included, so an upper
  bound of the server side) against ``GET /healthz`` in the same run. Every topic is marked
  changed before each request, so the shared views (services table, approvals queue) are built
  for it: the figure is a build's, not a cached copy's. Target: < 200 ms.
- Fan-out: the console's ``Live.hear`` runs on the journal writer's thread for every note; its
  cost per note with 50 connected event streams, against no stream. A note must cost the writer
  microseconds, not a dispatch's worth.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import httpx
from harness import Row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the engine's test parts

from test_runtime_support import AdminServer, fit_pipeline, write_rules

from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import build_engine, serve_in_thread

SERVICES = 200
ENTRIES = 10_000
PAGES = ("/", "/approvals", "/services/svc-007", "/journal?kind=decisions", "/control")
REQUESTS = 20
CLIENTS = 50
NOTES = 2000


def _fill(engine: object, now: float) -> None:
    journal = engine.journal  # type: ignore[attr-defined]
    events, decisions = [], []
    for i in range(ENTRIES // 2):
        service = f"svc-{i % SERVICES:03d}"
        event = {"id": f"evt-{i}", "service": service, "detector": "IForest", "score": 0.99, "threshold": 0.9,
                 "contributing": ["latency_p99_ms"], "window_start": now - 60, "window_end": now - 59,
                 "features": [["latency_p99_ms__raw", 12.5]]}  # fmt: skip
        events.append((event, "anomaly"))
        decisions.append(
            (
                {"id": f"dec-{i}", "event_id": f"evt-{i}", "service": service, "target": service,
                 "policy": "platform", "rule": "platform/restart", "action": "restart", "risk": "low",
                 "spec": {}},
                "verified",
                None,
            )
        )  # fmt: skip
    with journal.transaction():
        journal.record_events(events, ts=now - 30)
        journal.record_decisions(decisions)
        for i in range(50):
            journal.set_decision_status(f"dec-{i}", "awaiting_approval")
            journal.create_approval(f"dec-{i}", ttl_s=900, allowed_approvers=["alice"])
    scores, clock = engine.observations.scores, engine.observations.clock  # type: ignore[attr-defined]
    for k in range(SERVICES):
        scores[f"svc-{k:03d}"] = (0.3, now)
        clock[f"svc-{k:03d}"] = now


def _hour_of_history(live: object, now: float) -> None:
    points = live.history.points  # type: ignore[attr-defined]
    for k in range(SERVICES):
        points[f"svc-{k:03d}"] = deque((now - 3600 + 30 * i, 0.3 + 0.01 * (i % 7)) for i in range(121))


def _changed(live: object) -> None:
    for topic in ("services", "approvals", "control"):
        live.touch(topic)  # type: ignore[attr-defined]


def _timed_get(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, (path, r.status_code)
    return elapsed * 1000


def bench_console_pages(repeats: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, AdminServer() as admin:
        rules = write_rules(Path(tmp) / "rules", admin.url)
        settings = load_settings(overrides={"port": 0, "token": "bench-token-123"}, environ={})
        engine = build_engine(assemble(fit_pipeline(), rules), settings, Path(tmp) / "journals")
        running = serve_in_thread(engine)
        try:
            now = time.time()
            _fill(engine, now)
            live = running._server.config.app.state.console_live
            _hour_of_history(live, now)
            with httpx.Client(base_url=running.url, timeout=30) as client:
                for path in PAGES:
                    _timed_get(client, path)  # warm
                base = [_timed_get(client, "/healthz") for _ in range(REQUESTS * repeats)]
                for path in PAGES:
                    samples = []
                    for _ in range(REQUESTS * repeats):
                        _changed(live)
                        samples.append(_timed_get(client, path))
                    rows.append(
                        Row(
                            figure=f"console GET {path}, {ENTRIES:,} journal rows, {SERVICES} services",
                            unit="ms",
                            samples=samples,
                            baseline="GET /healthz, same server",
                            baseline_samples=base,
                            higher_is_better=False,
                            target="< 200 ms",
                            note=f"p95 {statistics.quantiles(samples, n=20)[-1]:.1f} ms",
                        )
                    )
            rows.append(_fan_out(running.url, live, repeats))
        finally:
            running.stop(drain=False)
    return rows


def _hear_us(hub: object) -> float:
    data = {"decision_id": "dec-1", "approval_id": "apr-1"}
    start = time.perf_counter()
    for _ in range(NOTES):
        hub.hear("approval_requested", data)  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / NOTES * 1e6


def _fan_out(url: str, hub: object, repeats: int) -> Row:
    baseline = [_hear_us(hub) for _ in range(repeats)]
    received = [0] * CLIENTS
    stop = threading.Event()

    def listen(k: int) -> None:
        with httpx.Client(timeout=None) as c, c.stream("GET", f"{url}/live") as r:
            for line in r.iter_lines():
                if line.startswith("event: change"):
                    received[k] += 1
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listen, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while hub.clients < CLIENTS and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    figure = [_hear_us(hub) for _ in range(repeats)]
    time.sleep(1.0)
    stop.set()
    hub.hear("approval_requested", {})  # type: ignore[attr-defined]  # wakes each reader to see stop
    time.sleep(1.0)
    delivered = sum(1 for n in received if n > 0)
    messages = sorted(received)[len(received) // 2]
    return Row(
        figure=f"Live.hear per note on the writer thread, {CLIENTS} event streams",
        unit="µs",
        samples=figure,
        baseline="no stream connected",
        baseline_samples=baseline,
        higher_is_better=False,
        note=f"{delivered}/{CLIENTS} streams received messages ({messages} each, median: one per"
        f" snapshot, not one per note; {NOTES * repeats * 2 + 1:,} notes)",
    )


BENCHMARKS = [bench_console_pages]
