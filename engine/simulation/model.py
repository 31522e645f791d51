"""The signal model of the synthetic AI platform: metric values as a function of time and faults.

One model serves two callers: the batch generator (``selfheal synth``) evaluates it over weeks of
10-second ticks in one vectorised call, and the live simulation evaluates it tick by tick while
faults are injected and remediated. It holds no per-tick state: every value is a closed-form
function of the time array, the active faults, the operator controls and (for observation noise)
the random generator passed in. So the same seed gives the same history, and a live tick at time
t sees the same expected platform as the history at time t.

The physics is deliberately small:

- external load = daily seasonality x weekend dip x a slow random wander (seeded sinusoids);
- request rates flow down the call graph (gateway -> inference replicas by traffic share ->
  vector-db / feature-store by fan-out; ingestion writes into the feature store on its own clock);
- each service has a capacity; utilisation rho = demand x (own work + time waiting on
  dependencies) / nominal, and latency, queue depth and errors grow with rho (M/M/1-like);
- latencies, errors and retrieval quality flow up the call graph (a caller waits for its
  dependencies and fails when a critical one fails), which is how incidents cascade.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ConfigError
from engine.simulation.config import (
    AnyServiceSpec,
    GatewaySpec,
    InferenceSpec,
    IngestionSpec,
    SynthConfig,
    VectorDbSpec,
)
from engine.simulation.faults import Effects, Fault, apply_faults

ROLE_METRICS: dict[str, tuple[str, ...]] = {
    "gateway": (
        "request_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "error_rate",
        "queue_depth",
        "cpu_util",
        "memory_util",
    ),
    "inference": (
        "request_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "ttft_ms",
        "tokens_per_s",
        "error_rate",
        "queue_depth",
        "response_variability",
        "cpu_util",
        "memory_util",
        "gpu_util",
    ),
    "vector_db": (
        "request_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "error_rate",
        "retrieval_hit_rate",
        "retrieval_precision",
        "cpu_util",
        "memory_util",
    ),
    "feature_store": (
        "request_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "error_rate",
        "cpu_util",
        "memory_util",
    ),
    "ingestion": (
        "request_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "error_rate",
        "queue_depth",
        "cpu_util",
        "memory_util",
    ),
}

PLATFORM_METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for ms in ROLE_METRICS.values() for m in ms))
"""Every metric name the platform emits: the one list policies, chaos experiments and tests share."""

MAX_SERVICES = 64
RHO_MAX = 0.95  # utilisation is capped: beyond it the queue grows without bound in reality
TIMEOUT_MS = 5000.0  # a caller gives up on a dependency call after this
RETRIES = 1.0  # failed calls are retried once, so an outage also raises the root's request rate
GEN_P99_RATIO = 1.8  # long answers: p99 generation time relative to the mean
SECONDS_PER_DAY = 86400.0
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True)
class Controls:
    """Operator controls of the live platform (time-constant for one call).

    ``capacity``: multiplier of a service's capacity (scaling out to twice the replicas = 2.0).
    ``share``: traffic share of inference services, overriding the config (shifting traffic).
    """

    capacity: Mapping[str, float] = field(default_factory=dict)
    share: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Upstream:
    """What a service's callers see of it."""

    p50: np.ndarray
    p99: np.ndarray
    err: np.ndarray
    precision_drop: np.ndarray | float


def _letters(k: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: replica suffixes."""
    out = ""
    k += 1
    while k:
        k, rem = divmod(k - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def resolve_services(cfg: SynthConfig, services: int | None) -> list[AnyServiceSpec]:
    """The services of a platform of the requested size, in dependency order (leaves first).

    Fewer than listed: the first N of the config's list (which is in dependency order, so every
    kept service keeps the dependencies that are kept). More: extra inference replicas cloned from
    ``scaling.replica_template``, named inference-c, inference-d, ..., placed after the last
    inference service, and every caller of the template also calls them.
    """
    listed = list(cfg.services)
    n = len(listed) if services is None else services
    if not 1 <= n <= MAX_SERVICES:
        raise ConfigError(
            f"--services must be between 1 and {MAX_SERVICES}, got {n}",
            hint=f"use 1..{len(listed) - 1} for a prefix of the listed platform, more to add replicas",
        )
    if n <= len(listed):
        kept = listed[:n]
        names = {s.name for s in kept}
        return [s.model_copy(update={"depends_on": [d for d in s.depends_on if d in names]}) for s in kept]
    template = cfg.service(cfg.scaling.replica_template)
    taken = {s.name for s in listed}
    replicas: list[AnyServiceSpec] = []
    k = 0
    while len(listed) + len(replicas) < n:
        name = f"{cfg.scaling.replica_prefix}{_letters(k)}"
        k += 1
        if name not in taken:
            replicas.append(template.model_copy(update={"name": name}))
            taken.add(name)
    extra = [r.name for r in replicas]
    out: list[AnyServiceSpec] = []
    for spec in listed:
        if template.name in spec.depends_on:
            spec = spec.model_copy(update={"depends_on": [*spec.depends_on, *extra]})
        out.append(spec)
    last_inference = max(i for i, s in enumerate(out) if s.role == "inference")
    return [*out[: last_inference + 1], *replicas, *out[last_inference + 1 :]]


class PlatformModel:
    """The platform's metrics as a function of time, faults and controls.

    >>> from engine.simulation.config import load_config
    >>> model = PlatformModel(load_config(), services=6, seed=0)
    >>> t = 1.767e9 + 10.0 * np.arange(3)
    >>> vals = model.values(t, faults=[Fault("bad_deploy", "inference-a", start=1.767e9)])
    >>> sorted(vals) == sorted(model.services) and len(vals["gateway"]["error_rate"]) == 3
    True
    """

    def __init__(self, cfg: SynthConfig, services: int | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.specs: dict[str, AnyServiceSpec] = {s.name: s for s in resolve_services(cfg, services)}
        self.services: list[str] = list(self.specs)
        self.topology: dict[str, list[str]] = {n: list(s.depends_on) for n, s in self.specs.items()}
        self.callers: dict[str, list[str]] = {n: [] for n in self.services}
        for name, deps in self.topology.items():
            for dep in deps:
                self.callers[dep].append(name)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        k = cfg.traffic.wander_components
        self._wander_period = rng.uniform(1.5 * 3600, 12 * 3600, k)
        self._wander_phase = rng.uniform(0.0, 2 * math.pi, k)
        self._wander_amp = rng.dirichlet(np.ones(k)) * cfg.traffic.wander_amplitude if k else np.zeros(0)
        self._nominal_p50: dict[str, float] = {}
        self._nominal_dep: dict[str, float] = {}
        for name in self.services:  # leaves first, so dependencies are known
            self._nominal_dep[name] = self._nominal_dep_ms(name)
            self._nominal_p50[name] = self._own_base_ms(self.specs[name]) + self._nominal_dep[name]

    def metrics(self, service: str) -> tuple[str, ...]:
        """The metric names a service emits."""
        return ROLE_METRICS[self.specs[service].role]

    def load(self, t: np.ndarray) -> np.ndarray:
        """External load (1.0 = the config's base rate): daily x weekly x (1 + wander)."""
        tr = self.cfg.traffic
        hours = np.mod(t, SECONDS_PER_DAY) / 3600.0
        daily = 1.0 + tr.daily_amplitude * np.cos(2 * math.pi * (hours - tr.peak_hour) / 24.0)
        # distance (in days) from the middle of the weekend (Sunday 00:00), smoothed over 6 hours
        day = np.mod(t / SECONDS_PER_DAY + EPOCH_WEEKDAY, 7.0)
        dist = np.abs(np.mod(day - 6.0 + 3.5, 7.0) - 3.5)
        weekend = np.clip((1.125 - dist) / 0.25, 0.0, 1.0)
        weekly = 1.0 - (1.0 - tr.weekend_factor) * weekend
        wander = np.zeros_like(t)
        for amp, period, phase in zip(self._wander_amp, self._wander_period, self._wander_phase, strict=True):
            wander += amp * np.sin(2 * math.pi * t / period + phase)
        return np.maximum(daily * weekly * (1.0 + wander), 0.05)

    def values(
        self,
        t: np.ndarray,
        faults: Iterable[Fault] = (),
        rng: np.random.Generator | None = None,
        controls: Controls | None = None,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Metric values per service and metric over the epoch-second times t.

        Without ``rng`` the expected values (no observation noise); with it, noisy observations.
        """
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        controls = controls or Controls()
        eff = apply_faults(faults, t, self)
        traffic = self.cfg.traffic.base_rate * self.load(t)
        shares = self._shares(controls, [n for n in self.services if self.specs[n].role == "inference"])
        down = {n: np.clip(eff.get(n, "down"), 0.0, 1.0) for n in self.services}

        rate: dict[str, np.ndarray] = {}
        for name in reversed(self.services):  # callers before their dependencies
            spec = self.specs[name]
            if isinstance(spec, GatewaySpec):
                demand = traffic
            elif isinstance(spec, InferenceSpec):
                demand = traffic * shares[name]
            elif isinstance(spec, IngestionSpec):
                hours = np.mod(t, SECONDS_PER_DAY) / 3600.0
                cycle = np.cos(2 * math.pi * (hours - spec.peak_hour) / 24.0)
                demand = spec.request_rate * (1.0 + spec.daily_amplitude * cycle)
            else:
                callers = self.callers[name]
                base = (
                    sum((rate[c] * (1.0 - down[c]) for c in callers), np.zeros_like(t))
                    if callers
                    else traffic
                )
                demand = base * spec.fanout
            rate[name] = demand * (1.0 + RETRIES * np.clip(eff.get(name, "err"), 0.0, 1.0))

        seen: dict[str, _Upstream] = {}
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in self.services:  # dependencies before their callers
            out[name], seen[name] = self._service(name, t, rate[name], down[name], eff, seen, controls)
        if rng is not None:
            for name in self.services:
                out[name] = self._observe(out[name], rng)
        return out

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _own_base_ms(spec: AnyServiceSpec) -> float:
        if isinstance(spec, InferenceSpec):
            return spec.ttft_ms + spec.output_tokens / spec.tokens_per_s * 1000.0
        return spec.latency_ms

    def _nominal_dep_ms(self, name: str) -> float:
        seq = [d for d in self.topology[name] if self.specs[d].role != "inference"]
        pool = [d for d in self.topology[name] if self.specs[d].role == "inference"]
        total = sum(self._nominal_p50[d] for d in seq)
        if pool:
            w = self._shares(Controls(), pool)
            total += sum(w[d] * self._nominal_p50[d] for d in pool)
        return total

    def _shares(self, controls: Controls, pool: list[str]) -> dict[str, float]:
        raw = {n: float(controls.share.get(n, self.specs[n].share)) for n in pool}  # type: ignore[union-attr]
        total = sum(raw.values())
        if total <= 0:
            return {n: 1.0 / len(pool) for n in pool}
        return {n: v / total for n, v in raw.items()}

    def _upstream(
        self, name: str, seen: dict[str, _Upstream], controls: Controls, like: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | float]:
        """Dependencies as the caller sees them: latency waited, error share, fallback, precision.

        Non-inference dependencies are called in sequence (latencies add, critical errors fail the
        request, non-critical ones degrade it to a fallback); inference dependencies form a
        load-balanced pool (traffic-share-weighted mean, a p99 dominated by the worst replica).
        """
        p50 = np.zeros_like(like)
        p99 = np.zeros_like(like)
        ok = np.ones_like(like)
        fallback = np.zeros_like(like)
        precision_drop: np.ndarray | float = 0.0
        pool = []
        for dep in self.topology[name]:
            up, spec = seen[dep], self.specs[dep]
            if spec.role == "inference":
                pool.append(dep)
                continue
            p50 = p50 + np.minimum(up.p50, TIMEOUT_MS)
            p99 = p99 + np.minimum(up.p99, TIMEOUT_MS)
            ok = ok * (1.0 - spec.criticality * up.err)
            fallback = fallback + (1.0 - spec.criticality) * up.err
            precision_drop = precision_drop + up.precision_drop
        if pool:
            w = self._shares(controls, pool)
            p50 = p50 + sum(w[d] * seen[d].p50 for d in pool)
            p99 = p99 + sum(w[d] * seen[d].p99 ** 4 for d in pool) ** 0.25
            ok = ok * (1.0 - sum(w[d] * self.specs[d].criticality * seen[d].err for d in pool))
        return p50, p99, 1.0 - ok, fallback, precision_drop

    def _service(
        self,
        name: str,
        t: np.ndarray,
        rate: np.ndarray,
        down: np.ndarray,
        eff: Effects,
        seen: dict[str, _Upstream],
        controls: Controls,
    ) -> tuple[dict[str, np.ndarray], _Upstream]:
        spec = self.specs[name]
        dep_p50, dep_p99, dep_err, fallback, precision_drop = self._upstream(name, seen, controls, t)
        slow = eff.get(name, "slow")
        base_ms = self._own_base_ms(spec)
        own_ms = base_ms * slow
        capacity = spec.capacity * float(controls.capacity.get(name, 1.0))
        work = np.clip(rate / capacity * slow, 0.0, 1.0)  # busy fraction of the service's own workers
        hold = (own_ms + dep_p50) / (base_ms + self._nominal_dep[name])
        rho = np.clip(rate / capacity * hold, 0.0, RHO_MAX)
        congestion = 1.0 + spec.congestion * rho / (1.0 - rho)

        own_err = np.clip(spec.error_rate * (1.0 + 4.0 * rho**4) + eff.get(name, "err"), 0.0, 1.0)
        err = 1.0 - (1.0 - own_err) * (1.0 - dep_err)
        err = down + (1.0 - down) * err
        cpu = spec.cpu_util + spec.cpu_per_load * work + eff.get(name, "cpu")
        cpu = (1.0 - down) * cpu + down * 0.3 * spec.cpu_util
        m: dict[str, np.ndarray] = {
            "request_rate": rate * (1.0 - down),
            "error_rate": err,
            "queue_depth": spec.queue_scale * rho**2 / (1.0 - rho) + eff.get(name, "backlog"),
            "cpu_util": np.clip(cpu, 0.0, 1.0),
            "memory_util": np.clip(
                spec.memory_util + spec.memory_per_load * work + eff.get(name, "mem"), 0.0, 1.0
            ),
        }
        if isinstance(spec, InferenceSpec):
            tps = spec.tokens_per_s / slow / (1.0 + 0.35 * work)
            gen_ms = spec.output_tokens / tps * 1000.0
            ttft_own = spec.ttft_ms * slow * congestion
            m["ttft_ms"] = ttft_own + dep_p50
            m["tokens_per_s"] = tps
            m["latency_p50_ms"] = m["ttft_ms"] + gen_ms
            m["latency_p99_ms"] = ttft_own * spec.p99_ratio + dep_p99 + gen_ms * GEN_P99_RATIO
            m["response_variability"] = np.clip(
                spec.response_variability
                + eff.get(name, "var")
                + spec.variability_per_precision_drop * precision_drop
                + 0.5 * fallback,
                0.0,
                1.0,
            )
            m["gpu_util"] = spec.gpu_util + spec.gpu_per_load * work
        else:
            own = own_ms * congestion
            m["latency_p50_ms"] = own + dep_p50
            m["latency_p99_ms"] = own * spec.p99_ratio + dep_p99
        own_drop: np.ndarray | float = 0.0
        if isinstance(spec, VectorDbSpec):
            own_drop = eff.get(name, "precision_drop")
            m["retrieval_hit_rate"] = spec.retrieval_hit_rate * (1.0 - eff.get(name, "hit_drop"))
            m["retrieval_precision"] = spec.retrieval_precision * (1.0 - own_drop)
        full = {k: np.broadcast_to(np.asarray(m[k], dtype=np.float64), t.shape) for k in self.metrics(name)}
        return full, _Upstream(full["latency_p50_ms"], full["latency_p99_ms"], err, own_drop)

    def _observe(self, expected: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Observation noise: Poisson counts, lognormal latencies/errors, additive utilisation."""
        noise = self.cfg.noise
        interval = float(self.cfg.interval_s)
        out: dict[str, np.ndarray] = {}
        for metric, mean in expected.items():
            n = mean.shape[0]
            if metric == "request_rate":
                val = rng.poisson(np.maximum(mean, 0.0) * interval) / interval
            elif metric == "queue_depth":
                val = rng.poisson(np.maximum(mean, 0.0)).astype(np.float64)
            elif metric in ("latency_p50_ms", "ttft_ms"):
                val = mean * np.exp(noise.latency_sigma * rng.standard_normal(n))
            elif metric == "latency_p99_ms":
                val = mean * np.exp(noise.p99_sigma * rng.standard_normal(n))
            elif metric == "tokens_per_s":
                val = mean * np.exp(noise.tokens_sigma * rng.standard_normal(n))
            elif metric == "error_rate":
                val = np.clip(mean * np.exp(noise.error_sigma * rng.standard_normal(n)), 0.0, 1.0)
            elif metric in ("retrieval_hit_rate", "retrieval_precision"):
                val = np.clip(mean + noise.retrieval_sd * rng.standard_normal(n), 0.0, 1.0)
            elif metric == "response_variability":
                val = np.clip(mean + noise.variability_sd * rng.standard_normal(n), 0.0, 1.0)
            else:  # cpu_util, memory_util, gpu_util
                val = np.clip(mean + noise.util_sd * rng.standard_normal(n), 0.0, 1.0)
            out[metric] = val
        if "latency_p99_ms" in out:
            out["latency_p99_ms"] = np.maximum(out["latency_p99_ms"], out["latency_p50_ms"])
        return out
