"""Policy host throughput: anomaly events through our PolicyHost vs durable-rules' raw ``post``.

Both sides run the same compiled ruleset (the shipped rules/) on a fresh durable-rules Host. The
baseline posts ready-made messages straight to ``Host.post`` with no-op actions; the figure goes
through ``PolicyHost.post`` (event validation, health facts, history facts for persistence,
decision rendering). The ratio is the cost of the wrapper's bookkeeping.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from pathlib import Path

from durable.engine import Host, MessageNotHandledException
from harness import Row

from engine.policy import PolicyHost, compile_policies, load_policies
from engine.policy.host import _message
from engine.records import AnomalyEvent

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


def _raw_rate(compiled, events: list[AnomalyEvent]) -> float:  # type: ignore[no-untyped-def]
    host = _RawHost()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    host.register_rulesets({name: copy.deepcopy(compiled.rules)})
    messages = [_message(e, tick_seconds=60.0) for e in events]
    start = time.perf_counter()
    for msg in messages:
        with contextlib.suppress(MessageNotHandledException):
            host.post(name, msg)
    return len(messages) / (time.perf_counter() - start)


def _host_rate(policy_set, events: list[AnomalyEvent]) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    start = time.perf_counter()
    for event in events:
        host.post(event)
    return len(events) / (time.perf_counter() - start), host.stats.decided


def bench_policy_host_post(repeats: int) -> list[Row]:
    policy_set = load_policies(RULES)
    compiled = compile_policies(policy_set)
    figure, baseline, decided = [], [], 0
    for _ in range(repeats):
        events = _events(N_EVENTS)  # fresh ids every repeat
        baseline.append(_raw_rate(compiled, events))
        rate, decided = _host_rate(policy_set, _events(N_EVENTS))
        figure.append(rate)
    return [
        Row(
            figure="PolicyHost.post anomaly events (shipped rules/)",
            unit="events/s",
            samples=figure,
            baseline="durable-rules raw Host.post, same ruleset",
            baseline_samples=baseline,
            note=f"{N_EVENTS} events/run, {len(compiled.rules)} durable rules, {decided} decisions/run",
        )
    ]


BENCHMARKS = [bench_policy_host_post]
