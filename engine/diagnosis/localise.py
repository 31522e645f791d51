"""Where the fault is: the root cause over the topology, held over a time window.

A fault shows on its service and on every service that calls it, directly or not: an outage of
the feature store makes the inference services fail and vary (which alone reads like a bad
deploy) and the gateway fail. The root is the most upstream anomalous service whose fault
*explains* a caller's symptoms; the caller is then its victim. What a kind can explain in a caller
is declared (``CALLER_SYMPTOMS``): a slow or failing dependency makes its callers slow, failing,
queueing and erratic; a stale index makes their answers erratic; nothing upstream makes a
caller's memory climb or its own index go stale. So a service with a symptom its upstream cannot
cause is a root of its own (a memory leak on an inference service while the vector index is
stale: two roots), and an upstream that only sees more requests (its caller retries) explains
nothing.

A symptom also needs a way to reach the caller (``CARRIERS``): a caller waits for its dependency
and gets its errors and its answers, so its latency is explained only by an upstream that is slow
or failing, its errors by one that fails, its erratic answers by one that fails or retrieves
badly. An upstream's kind is not enough: a feature store leaking memory at normal speed explains
none of a slow caller's slowness (a latency creep on inference-a under it was read as the leak's
victim until the leak was restarted, and missed its deadline). An inference service's decode
speed (tokens/s) is its own work: nothing upstream carries it.

"Held over a window": a service counts as anomalous while any of its rows in the last
``WINDOW_S`` stood out, and its kind is the mean of those rows' probabilities, so one quiet or
odd row neither drops a root nor flips its kind.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engine.diagnosis.signature import METRICS, QUIET_Z

WINDOW_S = 300.0
"""How long a service's anomaly and kind are held (five one-minute rows)."""
STRONG_Z = 5.0
"""A caller's symptom is a metric at least this far from its normal."""
_SLOW_OR_FAILING = frozenset(
    {
        "latency_p50_ms",
        "latency_p99_ms",
        "ttft_ms",
        "tokens_per_s",
        "error_rate",
        "queue_depth",
        "response_variability",
        "request_rate",
        "cpu_util",
        "gpu_util",
    }
)
CALLER_SYMPTOMS: dict[str, frozenset[str]] = {
    "latency_creep": _SLOW_OR_FAILING,
    "memory_leak": _SLOW_OR_FAILING,
    "bad_deploy": _SLOW_OR_FAILING,
    "dependency_outage": _SLOW_OR_FAILING,
    "stale_index": frozenset({"response_variability", "error_rate"}),
    "unknown": frozenset(),
}
"""Which of a caller's metrics a fault of each kind upstream can move."""
_WAITED = (("latency_p50_ms", 1), ("latency_p99_ms", 1), ("error_rate", 1))  # slow or failing
_ANSWERED = (("error_rate", 1), ("retrieval_precision", -1), ("retrieval_hit_rate", -1))
CARRIERS: dict[str, tuple[tuple[str, int], ...]] = {
    "latency_p50_ms": _WAITED,
    "latency_p99_ms": _WAITED,
    "ttft_ms": _WAITED,
    "queue_depth": _WAITED,
    "error_rate": _ANSWERED,
    "response_variability": _ANSWERED,
    "tokens_per_s": (),
}
"""What must show upstream, (metric, direction) at least ``QUIET_Z`` away from its normal, for a
caller's symptom to be the upstream's doing; a caller's load (``LOAD``) needs nothing."""
LOAD = frozenset({"request_rate", "cpu_util", "gpu_util"})
"""Symptoms of more work, not of a fault: a dependency that only sees more calls (its caller
retries, or scales out) is busy, not broken, and explains nothing of its callers."""


def is_fault(kind: str, z: np.ndarray | None) -> bool:
    """Whether an anomalous service's signature is a fault that can spread: a known kind and a
    strong symptom beyond load."""
    if kind == "unknown" or z is None:
        return False
    return any(abs(z[j]) >= STRONG_Z and METRICS[j] not in LOAD for j in range(len(METRICS)))


def caused(kind: str, upstream_z: np.ndarray | None) -> frozenset[str]:
    """The caller metrics a fault of ``kind`` upstream moves, given what the upstream shows
    (``upstream_z``; unknown: everything its kind can move)."""
    allowed = CALLER_SYMPTOMS.get(kind, frozenset())
    if upstream_z is None:
        return allowed

    def shows(metric: str, sign: int) -> bool:
        return sign * float(upstream_z[METRICS.index(metric)]) >= QUIET_Z

    return frozenset(
        m for m in allowed if m in LOAD or any(shows(metric, sign) for metric, sign in CARRIERS.get(m, ()))
    )


def explains(kind: str, caller_z: np.ndarray | None, upstream_z: np.ndarray | None = None) -> bool:
    """Whether a fault of ``kind`` upstream (signature ``upstream_z``, when known) accounts for
    every strong symptom of the caller."""
    allowed = caused(kind, upstream_z)
    if not allowed or (upstream_z is not None and not is_fault(kind, upstream_z)):
        return False
    if caller_z is None:
        return True  # the caller shows nothing of its own
    strong = [METRICS[j] for j in np.flatnonzero(np.abs(caller_z) >= STRONG_Z)]
    return all(m in allowed for m in strong)


def upstream_closure(topology: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, int]]:
    """Every service's upstreams, transitive, with their distance (1: called directly)."""
    out: dict[str, dict[str, int]] = {}
    for service in topology:
        seen: dict[str, int] = {}
        frontier, depth = list(topology.get(service, ())), 1
        while frontier:
            nxt: list[str] = []
            for u in frontier:
                if u not in seen and u != service:
                    seen[u] = depth
                    nxt.extend(topology.get(u, ()))
            frontier, depth = nxt, depth + 1
        out[service] = seen
    return out


def root_of(
    service: str,
    anomalous: Mapping[str, tuple[str, np.ndarray | None]],
    upstreams: Mapping[str, Mapping[str, int]],
) -> str:
    """The root cause of ``service``'s anomaly: itself, or the furthest anomalous upstream whose
    kind explains its symptoms. ``anomalous`` maps each anomalous service to (kind, signature)."""
    mine = anomalous.get(service)
    z = None if mine is None else mine[1]
    best, best_depth = service, 0
    for up, depth in upstreams.get(service, {}).items():
        seen = anomalous.get(up)
        if seen is not None and explains(seen[0], z, seen[1]) and depth > best_depth:
            best, best_depth = up, depth
    return best


def own_symptoms(
    service: str,
    z: np.ndarray,
    anomalous: Mapping[str, tuple[str, np.ndarray | None]],
    upstreams: Mapping[str, Mapping[str, int]],
) -> np.ndarray:
    """A root's signature without what its faulty upstreams cause in it: a memory leak on an
    inference service while the vector index is stale also answers erratically (the index's
    doing), and read whole it looks like a bad deploy."""
    own = z.copy()
    for up in upstreams.get(service, {}):
        seen = anomalous.get(up)
        if seen is not None and is_fault(seen[0], seen[1]):
            for metric in caused(seen[0], seen[1]):
                own[METRICS.index(metric)] = 0.0
    return own
