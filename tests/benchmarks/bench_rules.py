"""Policy host throughput: anomaly events through our PolicyHost vs durable-rules' raw ``post``.

Both sides run the same compiled ruleset on a fresh durable-rules Host. The baseline posts the
same messages, ready-made, straight to ``Host.post`` with no-op actions; the figure goes
through ``PolicyHost.post`` (event validation, health facts, history facts for persistence,
decision rendering). The ratio is the cost of the wrapper's bookkeeping. The shipped rules decide
on none of these events; a second figure posts events as the engine makes them (features, a
diagnosis) through a rule that decides on every one, as the engine benchmark's rule does.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
import uuid
from pathlib import Path

from durable.engine import Host, MessageNotHandledException
from harness import Row

from engine.policy import PolicyHost, PolicySet, compile_policies, load_policies
from engine.policy.host import _message
from engine.records import AnomalyEvent, Diagnosis

RULES = Path(__file__).resolve().parents[2] / "rules"
N_EVENTS = 5000
SERVICES = ["inference-a", "inference-b"]  # siblings: neither gates the other


def _events(n: int) -> list[AnomalyEvent]:
    out = []
    for i in range(n):
        service = SERVICES[i % len(SERVICES)]
        out.append(
            AnomalyEvent(
                service=service,
                detector="iforest",
                score=0.75 + (i % 5) * 0.05,
                ts=1_790_000_000 + 60 * (i // 6),
                tick=i // 6,
                metrics={"memory_util": 0.8 + (i % 3) * 0.05, "queue_depth": float(i % 40)},
                contributing=["memory_util"] if i % 2 else ["latency_p99_ms"],
            )
        )
    return out


class _RawHost(Host):
    def get_action(self, action_name: str):  # type: ignore[no-untyped-def]
        return lambda c: None

    def _run(self) -> None:
        return None


def _raw_rate(compiled, events: list[AnomalyEvent], tick_seconds: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    host = _RawHost()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    (rules,) = compiled.rulesets  # the benchmark's services fit one ruleset
    host.register_rulesets({name: copy.deepcopy(rules)})
    messages = [_message(e, tick_seconds=tick_seconds) for e in events]
    start = time.perf_counter()
    for msg in messages:
        with contextlib.suppress(MessageNotHandledException):
            host.post(name, msg)
    return len(messages) / (time.perf_counter() - start)


def _host_rate(policy_set, events: list[AnomalyEvent], tick_seconds: float = 60.0) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set, tick_seconds=tick_seconds)
    start = time.perf_counter()
    for event in events:
        host.post(event)
    return len(events) / (time.perf_counter() - start), host.stats.decided


DECIDING_SERVICES = [f"svc-{i:02d}" for i in range(34)]
METRICS = ["request_rate", "latency_p50_ms", "latency_p99_ms", "error_rate", "cpu_util", "memory_util"]
RESTART_EVERY_EVENT = """policy: bench
version: 1
rules:
  - name: restart-any
    when: {services: ['svc-*']}
    then: {action: restart}
    safeguards: {cooldown: 0.001, max_per_hour: 1000000, max_per_hour_global: 1000000,
                 max_concurrent: 1000, blast_radius: 1.0}
    verify: {steady_state: {score_below: 1.0}, deadline: 5s}
"""


def _engine_events(n: int) -> list[AnomalyEvent]:
    """Anomaly events as the engine makes them: metrics, contributing, features and a diagnosis."""
    out = []
    for i in range(n):
        service, ts = DECIDING_SERVICES[i % len(DECIDING_SERVICES)], 1_700_000_000.0 + 15 * i
        features = [(f"{m}__z", 1.5 + (i + j) % 7 * 0.25) for j, m in enumerate(METRICS)]
        diagnosis = Diagnosis(
            kind="latency_creep",
            probability=0.8,
            root=service,
            evidence=(("latency_p99_ms", 4.25), ("cpu_util", 2.5)),
            window_start=ts - 45,
            window_end=ts,
        )
        out.append(
            AnomalyEvent(
                service=service,
                detector="IForest",
                score=0.97,
                threshold=0.9,
                ts=ts,
                window_start=ts - 45,
                window_end=ts,
                metrics={m: 0.5 + j for j, m in enumerate(METRICS)},
                contributing=("latency_p99_ms", "cpu_util", "memory_util"),
                features=tuple(features[:5]),
                bundle_version="selfheal-detector-v1",
                detector_version="3",
                diagnosis=diagnosis,
            )
        )
    return out


def _deciding_policies() -> PolicySet:
    with tempfile.TemporaryDirectory() as folder:
        services = "\n".join(f"  {s}: {{replicas: 4}}" for s in DECIDING_SERVICES)
        (Path(folder) / "topology.yaml").write_text(f"services:\n{services}\n")
        (Path(folder) / "bench.yaml").write_text(RESTART_EVERY_EVENT)
        return load_policies(Path(folder))


def bench_policy_host_post(repeats: int) -> list[Row]:
    cases = [
        ("anomaly events (shipped rules/)", load_policies(RULES), _events, 60.0),
        ("deciding on every event (engine-made events)", _deciding_policies(), _engine_events, 15.0),
    ]
    rows = []
    for label, policy_set, make_events, tick_seconds in cases:
        compiled = compile_policies(policy_set)
        figure, baseline, decided = [], [], 0
        for _ in range(repeats):  # fresh events (ids) every repeat
            baseline.append(_raw_rate(compiled, make_events(N_EVENTS), tick_seconds))
            rate, decided = _host_rate(policy_set, make_events(N_EVENTS), tick_seconds)
            figure.append(rate)
        rows.append(
            Row(
                figure=f"PolicyHost.post {label}",
                unit="events/s",
                samples=figure,
                baseline="durable-rules raw Host.post, same ruleset and messages",
                baseline_samples=baseline,
                note=f"{N_EVENTS} events/run, {compiled.rule_count} durable rules, {decided} decisions/run",
            )
        )
    return rows


BENCHMARKS = [bench_policy_host_post]
