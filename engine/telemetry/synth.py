"""Synthetic AI-platform telemetry with labeled incidents (the data behind ``selfheal synth``).

``generate`` draws an incident schedule, evaluates the platform model (``engine.simulation.model``) over
every 10-second tick in one vectorised call, and returns the points in the store's long format
plus the incident windows. The same seed gives identical frames.

Labels: one incident row per fault, on the root service only, with its kind and source "synth";
the cascade to dependents is visible in their metrics but not labeled, so that an engine which
acts on a victim instead of the root is measurably wrong. The window runs from the fault's start
to the end of its recovery (the signal is back to normal).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from engine.errors import ConfigError
from engine.simulation.config import (
    DEFAULT_CONFIG,
    INCIDENT_KINDS,
    KIND_ROLES,
    SynthConfig,
    config_from_dict,
    load_config,
)
from engine.simulation.faults import Fault
from engine.simulation.model import ROLE_METRICS, Controls, PlatformModel, resolve_services

__all__ = [
    "DEFAULT_CONFIG",
    "INCIDENT_KINDS",
    "Controls",
    "Fault",
    "PlatformModel",
    "SynthConfig",
    "SynthData",
    "check_request",
    "config_from_dict",
    "generate",
    "load_config",
    "resolve_services",
    "schedule_incidents",
    "to_epoch_us",
    "write_parquet",
]

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)
MAX_DAYS = 366.0
MAX_POINTS = 60_000_000  # the frame is built in memory (~40 bytes a point); beyond this, split the run
POINT_SCHEMA = {"ts": pl.Datetime("us"), "service": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64}
INCIDENT_SCHEMA = {
    "service": pl.Utf8,
    "kind": pl.Utf8,
    "start": pl.Datetime("us"),
    "end": pl.Datetime("us"),
    "source": pl.Utf8,
}


@dataclass(frozen=True)
class SynthData:
    """A generated history: points (long format), incidents (root only) and the call graph."""

    points: pl.DataFrame
    incidents: pl.DataFrame
    topology: dict[str, list[str]]
    faults: tuple[Fault, ...]
    start: datetime
    end: datetime  # exclusive
    seed: int


def to_epoch_us(ts: datetime) -> int:
    """Naive UTC (or aware, converted to UTC) datetime -> integer epoch microseconds."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return (ts - EPOCH) // timedelta(microseconds=1)


def schedule_incidents(
    cfg: SynthConfig, model: PlatformModel, t_start: float, t_end: float, rng: np.random.Generator
) -> list[Fault]:
    """Draw the incidents of [t_start, t_end) (epoch s): counts, roots, durations, magnitudes, times.

    Counts are per_day x days, the fractional part drawn as a coin flip, so a 14-day history has
    every kind whose rate is at least 1/14 per day. Incidents never overlap (with min_gap_minutes
    between them) and none starts in the warm-up, so each window has one root cause and the start
    of the history is clean training data. An incident that does not fit is dropped with a warning.
    """
    inc = cfg.incidents
    step = float(cfg.interval_s)
    span = t_end - t_start
    first = t_start + math.ceil(min(inc.warmup_hours * 3600.0, 0.2 * span) / step) * step  # on the grid
    gap = inc.min_gap_minutes * 60.0
    wanted: list[Fault] = []
    for kind, spec in inc.kinds.items():
        roles = set(spec.roles) if spec.roles else KIND_ROLES[kind]
        targets = [
            name
            for name in model.services
            if model.specs[name].role in roles and (kind != "dependency_outage" or model.callers[name])
        ]
        expected = spec.per_day * span / 86400.0
        count = int(expected) + int(rng.random() < expected - int(expected))
        if not targets:
            if count:
                log.info("no service can host %s on this platform; skipping %d incident(s)", kind, count)
            continue
        for _ in range(count):
            service = targets[int(rng.integers(len(targets)))]
            duration = max(step, round(rng.uniform(*spec.duration_minutes) * 60.0 / step) * step)
            wanted.append(
                Fault(
                    kind=kind,
                    service=service,
                    start=0.0,
                    end=duration,
                    magnitude=float(rng.uniform(*spec.magnitude)),
                    ramp_s=duration,
                    recovery_s=spec.recovery_minutes * 60.0,
                )
            )
    placed: list[Fault] = []
    for fault in sorted(wanted, key=lambda f: -f.label_end):  # longest first packs best
        start = _free_slot(fault.label_end, first, t_end, step, gap, placed, rng)
        if start is None:
            log.warning("no room for a %s of %.0f min; dropped it", fault.kind, fault.label_end / 60.0)
            continue
        placed.append(
            Fault(
                kind=fault.kind,
                service=fault.service,
                start=start,
                end=start + fault.end,
                magnitude=fault.magnitude,
                ramp_s=fault.ramp_s,
                recovery_s=fault.recovery_s,
            )
        )
    return sorted(placed, key=lambda f: f.start)


def _free_slot(
    length: float,
    lo: float,
    t_end: float,
    step: float,
    gap: float,
    placed: list[Fault],
    rng: np.random.Generator,
    attempts: int = 200,
) -> float | None:
    """A tick-aligned start in [lo, t_end - length] whose window keeps ``gap`` from every placed one."""
    hi = t_end - length
    for _ in range(attempts if hi > lo else 0):
        start = lo + math.floor((rng.uniform(lo, hi) - lo) / step) * step
        if all(start - gap >= p.label_end or start + length + gap <= p.start for p in placed):
            return start
    return None


def check_request(cfg: SynthConfig, days: float, services: int | None = None) -> int:
    """Refuse a request ``generate`` cannot honour, cheaply and before any work starts (the CLI
    calls it before its progress bar); return the number of ticks."""
    if not 0 < days <= MAX_DAYS:
        raise ConfigError(f"--days must be in (0, {MAX_DAYS:g}], got {days}", hint="e.g. --days 14")
    n = int(days * 86400 // cfg.interval_s)
    if n < 1:
        raise ConfigError(
            f"--days {days} is shorter than one interval ({cfg.interval_s} s)", hint="ask for more days"
        )
    specs = resolve_services(cfg, services)
    n_series = sum(len(ROLE_METRICS[s.role]) for s in specs)
    if n * n_series > MAX_POINTS:
        raise ConfigError(
            f"{days:g} days of {len(specs)} services is {n * n_series:,} points, more than "
            f"the {MAX_POINTS:,} one run builds in memory",
            hint="generate fewer days per run and use --start to append the next period",
        )
    return n


def generate(
    cfg: SynthConfig,
    days: float,
    services: int | None = None,
    seed: int = 0,
    start: datetime | None = None,
) -> SynthData:
    """Generate ``days`` of platform telemetry for ``services`` services (default: as configured)."""
    n = check_request(cfg, days, services)
    step_us = cfg.interval_s * 1_000_000
    t0_us = to_epoch_us(start or cfg.start)
    model = PlatformModel(cfg, services, seed=seed)
    ts_us = t0_us + step_us * np.arange(n, dtype=np.int64)
    t = ts_us / 1e6
    schedule_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    faults = schedule_incidents(
        cfg, model, float(t[0]), float(t[-1]) + cfg.interval_s, np.random.default_rng(schedule_seq)
    )
    values = model.values(t, faults, np.random.default_rng(noise_seq))
    ts = pl.Series("ts", ts_us).cast(pl.Datetime("us"))
    frames = [
        pl.DataFrame({"ts": ts, "value": arr}).with_columns(
            service=pl.lit(service, pl.Utf8), metric=pl.lit(metric, pl.Utf8)
        )
        for service in model.services
        for metric, arr in values[service].items()
    ]
    points = pl.concat(frames).select(list(POINT_SCHEMA))
    incidents = pl.DataFrame(
        {
            "service": [f.service for f in faults],
            "kind": [f.kind for f in faults],
            "start": [round(f.start * 1e6) for f in faults],
            "end": [round(f.label_end * 1e6) for f in faults],
            "source": ["synth"] * len(faults),
        },
        schema={**INCIDENT_SCHEMA, "start": pl.Int64, "end": pl.Int64},
    ).with_columns(pl.col("start").cast(pl.Datetime("us")), pl.col("end").cast(pl.Datetime("us")))
    log.info("generated %d points, %d incidents, seed %d", points.height, incidents.height, seed)
    return SynthData(
        points=points,
        incidents=incidents,
        topology=model.topology,
        faults=tuple(faults),
        start=EPOCH + timedelta(microseconds=int(t0_us)),
        end=EPOCH + timedelta(microseconds=int(t0_us + n * step_us)),
        seed=seed,
    )


def write_parquet(data: SynthData, path: Path) -> tuple[Path, Path]:
    """Write points to PATH and the incidents beside it as PATH-stem.incidents.parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    incidents_path = path.with_name(f"{path.stem}.incidents.parquet")
    data.points.write_parquet(path)
    data.incidents.write_parquet(incidents_path)
    return path, incidents_path
