"""The service topology (rules/topology.yaml), declared once and shared by every policy.

Policies name services; the topology says which exist, how many replicas each runs (for the blast
radius safeguard), its tier, and its upstream dependencies (for dependency gating: a service whose
upstream is anomalous is a victim, and the policy acts on the root instead).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.simulation.model import PLATFORM_METRICS

Tier = Literal["edge", "serving", "data", "batch"]


class ServiceSpec(BaseModel):
    """One service of the platform."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Tier = "serving"
    replicas: int = Field(default=1, ge=1, description="replicas normally running (blast radius base)")
    depends_on: tuple[str, ...] = Field(default=(), description="upstream services this one calls")
    description: str = ""


class Topology(BaseModel):
    """Services by name. Build it with ``load_topology`` so that references are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, ServiceSpec] = Field(min_length=1)
    metrics: tuple[str, ...] = Field(default=PLATFORM_METRICS, description="metric names policies may use")

    @property
    def names(self) -> list[str]:
        return sorted(self.services)

    def upstreams(self, service: str) -> list[str]:
        """Every service ``service`` depends on, directly or transitively (sorted, itself excluded)."""
        seen: set[str] = set()
        stack = list(self.services[service].depends_on)
        while stack:
            name = stack.pop()
            if name in seen or name == service or name not in self.services:
                continue
            seen.add(name)
            stack.extend(self.services[name].depends_on)
        return sorted(seen)

    def expand(self, patterns: Iterable[str]) -> list[str]:
        """Service names matched by names or shell-style globs (``inference-*``), sorted."""
        out: set[str] = set()
        for pattern in patterns:
            out.update(fnmatch.filter(self.services, pattern))
        return sorted(out)

    def cycles(self) -> list[list[str]]:
        """Dependency cycles (each as a path), so validation can refuse them."""
        found: list[list[str]] = []
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for dep in self.services[name].depends_on:
                if dep not in self.services:
                    continue
                if state.get(dep) == 1:
                    found.append([*path[path.index(dep) :], dep] if dep in path else [name, dep])
                elif dep not in state:
                    visit(dep, [*path, dep])
            state[name] = 2

        for name in sorted(self.services):
            if name not in state:
                visit(name, [name])
        return found


TOPOLOGY_FILE = "topology.yaml"


def default_topology_path(policy_path: Path) -> Path:
    """Where the topology for a policy file or folder lives: ``topology.yaml`` beside it."""
    folder = policy_path if policy_path.is_dir() else policy_path.parent
    return folder / TOPOLOGY_FILE
