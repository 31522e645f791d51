"""The typed configuration of the synthetic AI platform (``datasets/synth_platform.yaml``).

The file is parsed into pydantic models so that a wrong key, a wrong type or an inconsistent
topology fails at load with every problem listed (file, field path, fix), never halfway through a
generation. Values not given in the file take the defaults declared here; the shipped YAML spells
them all out so that it doubles as documentation.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import ConfigError, Problem, SpecError
from engine.shipped import shipped
from engine.specs import did_you_mean, load_yaml, problems_from

Role = Literal["gateway", "inference", "vector_db", "feature_store", "ingestion"]
IncidentKind = Literal["latency_creep", "memory_leak", "stale_index", "bad_deploy", "dependency_outage"]
INCIDENT_KINDS: tuple[IncidentKind, ...] = (
    "latency_creep",
    "memory_leak",
    "stale_index",
    "bad_deploy",
    "dependency_outage",
)
# Which roles can host each incident kind (a stale index needs an index, a bad deploy a model).
KIND_ROLES: dict[str, frozenset[str]] = {
    "latency_creep": frozenset({"gateway", "inference", "vector_db", "feature_store", "ingestion"}),
    "memory_leak": frozenset({"gateway", "inference", "vector_db", "feature_store", "ingestion"}),
    "stale_index": frozenset({"vector_db"}),
    "bad_deploy": frozenset({"inference"}),
    "dependency_outage": frozenset({"vector_db", "feature_store"}),
}

DEFAULT_CONFIG = shipped("datasets") / "synth_platform.yaml"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrafficSpec(_Strict):
    """External load on the platform: daily and weekly seasonality plus a slow random wander."""

    base_rate: Positive = 120.0  # gateway requests/s at load 1.0
    daily_amplitude: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.45
    peak_hour: Annotated[float, Field(ge=0.0, lt=24.0)] = 15.0
    weekend_factor: Annotated[float, Field(gt=0.0, le=1.5)] = 0.7
    wander_amplitude: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.08
    wander_components: Annotated[int, Field(ge=0, le=16)] = 4


class NoiseSpec(_Strict):
    """Observation noise; rates and queue depths are Poisson counts over the interval."""

    latency_sigma: NonNegative = 0.06  # lognormal sigma of p50 latencies and ttft
    p99_sigma: NonNegative = 0.15  # lognormal sigma of p99 latencies
    tokens_sigma: NonNegative = 0.04
    error_sigma: NonNegative = 0.35  # lognormal sigma of error rates (they are spiky)
    util_sd: NonNegative = 0.015  # additive sd of cpu/memory/gpu utilisation
    retrieval_sd: NonNegative = 0.01  # additive sd of hit rate and precision
    variability_sd: NonNegative = 0.01


class _ServiceBase(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    depends_on: list[str] = []
    capacity: Positive  # requests/s at which utilisation reaches 1
    p99_ratio: Annotated[float, Field(ge=1.0)] = 2.5
    error_rate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.002
    criticality: Fraction = 1.0  # share of this service's errors that its callers turn into errors
    congestion: NonNegative = 0.3  # latency grows by congestion * rho / (1 - rho)
    queue_scale: NonNegative = 5.0  # queue depth = queue_scale * rho^2 / (1 - rho)
    cpu_util: Fraction = 0.15  # idle
    cpu_per_load: Fraction = 0.6  # added at utilisation 1
    memory_util: Fraction = 0.45
    memory_per_load: Fraction = 0.05


class GatewaySpec(_ServiceBase):
    role: Literal["gateway"]
    latency_ms: Positive = 8.0


class InferenceSpec(_ServiceBase):
    role: Literal["inference"]
    share: Positive = 1.0  # relative share of gateway traffic
    ttft_ms: Positive = 180.0  # prefill time at idle, without retrieval and features
    tokens_per_s: Positive = 65.0
    output_tokens: Positive = 180.0
    response_variability: Fraction = 0.12
    variability_per_precision_drop: NonNegative = 0.6
    gpu_util: Fraction = 0.12  # idle
    gpu_per_load: Fraction = 0.8


class VectorDbSpec(_ServiceBase):
    role: Literal["vector_db"]
    latency_ms: Positive = 14.0
    fanout: Positive = 1.0  # calls per caller request
    retrieval_hit_rate: Fraction = 0.93
    retrieval_precision: Fraction = 0.86


class FeatureStoreSpec(_ServiceBase):
    role: Literal["feature_store"]
    latency_ms: Positive = 6.0
    fanout: Positive = 1.5


class IngestionSpec(_ServiceBase):
    role: Literal["ingestion"]
    latency_ms: Positive = 40.0  # per write batch, without the feature store's own latency
    request_rate: Positive = 25.0  # write batches/s at load 1.0 of its own schedule
    peak_hour: Annotated[float, Field(ge=0.0, lt=24.0)] = 2.0
    daily_amplitude: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3


AnyServiceSpec = GatewaySpec | InferenceSpec | VectorDbSpec | FeatureStoreSpec | IngestionSpec
ServiceSpec = Annotated[AnyServiceSpec, Field(discriminator="role")]
SPEC_BY_ROLE: dict[str, type[_ServiceBase]] = {
    "gateway": GatewaySpec,
    "inference": InferenceSpec,
    "vector_db": VectorDbSpec,
    "feature_store": FeatureStoreSpec,
    "ingestion": IngestionSpec,
}


class KindSpec(_Strict):
    """How often one incident kind happens, how long it lasts, how bad it gets and where."""

    per_day: NonNegative
    duration_minutes: tuple[Positive, Positive]
    magnitude: tuple[NonNegative, NonNegative]
    recovery_minutes: NonNegative = 0.0
    roles: list[Role] | None = None  # default: every role the kind can hit

    @model_validator(mode="after")
    def _ranges(self) -> KindSpec:
        for field in ("duration_minutes", "magnitude"):
            lo, hi = getattr(self, field)
            if lo > hi:
                raise ValueError(f"{field} is [low, high] but {lo} > {hi}; swap the two numbers")
        return self


class IncidentsSpec(_Strict):
    warmup_hours: NonNegative = 24.0  # incident-free history at the start (for training)
    min_gap_minutes: NonNegative = 90.0  # quiet time between any two incidents
    kinds: dict[IncidentKind, KindSpec]


class ScalingSpec(_Strict):
    """How ``--services N`` grows the platform beyond the listed services."""

    replica_template: str = "inference-a"
    replica_prefix: str = "inference-"


class SynthConfig(_Strict):
    """The whole generator configuration; ``services`` is in dependency order (leaves first)."""

    interval_s: Annotated[int, Field(ge=1, le=3600)] = 10
    start: datetime = datetime(2026, 1, 5)
    traffic: TrafficSpec = TrafficSpec()
    noise: NoiseSpec = NoiseSpec()
    services: Annotated[list[ServiceSpec], Field(min_length=1)]
    scaling: ScalingSpec = ScalingSpec()
    incidents: IncidentsSpec

    def service(self, name: str) -> AnyServiceSpec:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


def _did_you_mean(word: str, choices: list[str]) -> str:
    return did_you_mean(word, choices) or f"use one of: {', '.join(choices)}"


def _topology_problems(cfg: SynthConfig, source: str) -> list[Problem]:
    """Cross-field checks pydantic cannot express per field: names, dependency order, roles."""
    problems: list[Problem] = []
    known = [s.name for s in cfg.services]
    seen: set[str] = set()
    for i, svc in enumerate(cfg.services):
        if svc.name in seen:
            problems.append(
                Problem(source, f"services[{i}].name", f"'{svc.name}' is listed twice", "rename one")
            )
        for dep in svc.depends_on:
            where = f"services[{i}].depends_on"
            if dep == svc.name:
                problems.append(Problem(source, where, f"'{dep}' depends on itself", "remove it"))
            elif dep in known and dep not in seen:
                problems.append(
                    Problem(
                        source,
                        where,
                        f"'{dep}' is listed after '{svc.name}'",
                        f"move '{dep}' above '{svc.name}': services are in dependency order "
                        "(leaves first) and --services N takes the first N",
                    )
                )
            elif dep not in known:
                problems.append(Problem(source, where, f"unknown service '{dep}'", _did_you_mean(dep, known)))
        seen.add(svc.name)
    template = next((s for s in cfg.services if s.name == cfg.scaling.replica_template), None)
    if template is None or template.role != "inference":
        problems.append(
            Problem(
                source,
                "scaling.replica_template",
                f"'{cfg.scaling.replica_template}' is not an inference service of this file",
                _did_you_mean(
                    cfg.scaling.replica_template, [s.name for s in cfg.services if s.role == "inference"]
                ),
            )
        )
    for kind, spec in cfg.incidents.kinds.items():
        bad = [r for r in spec.roles or () if r not in KIND_ROLES[kind]]
        if bad:
            problems.append(
                Problem(
                    source,
                    f"incidents.kinds.{kind}.roles",
                    f"{kind} cannot happen on {', '.join(bad)}",
                    f"use some of {', '.join(sorted(KIND_ROLES[kind]))}",
                )
            )
    return problems


def config_from_dict(raw: Any, *, source: str = "<dict>") -> SynthConfig:
    """Validate a parsed mapping; raise SpecError listing every problem with file, path and fix."""
    hint = f"edit {source}; datasets/README.md documents every field"
    if not isinstance(raw, dict):
        raise SpecError(
            [Problem(source, "", f"expected a mapping at the top level, got {type(raw).__name__}")], hint=hint
        )
    try:
        cfg = SynthConfig.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(problems_from(exc, file=source, model=SynthConfig), hint=hint) from exc
    problems = _topology_problems(cfg, source)
    if problems:
        raise SpecError(problems, hint=hint)
    return cfg


def load_config(path: Path | str | None = None) -> SynthConfig:
    """Load and validate the generator config (default: datasets/synth_platform.yaml)."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if not file.is_file():
        raise ConfigError(
            f"synthetic platform config not found: {file}",
            hint="pass --config PATH, or restore datasets/synth_platform.yaml from the repository",
        )
    raw = load_yaml(file, hint="fix the YAML syntax (indentation, colons, quotes)")
    return config_from_dict(raw, source=str(file))
