"""The platform is declared for the generator (datasets/) and for the policies (rules/): they must agree."""

from __future__ import annotations

from conftest import REPO

from engine.policy import load_topology
from engine.telemetry.synth import PlatformModel, load_config


def test_policy_topology_matches_the_synthetic_platform() -> None:
    model = PlatformModel(load_config(REPO / "datasets" / "synth_platform.yaml"))
    topology = load_topology(REPO / "rules" / "topology.yaml")
    synth_edges = {(svc, dep) for svc, deps in model.topology.items() for dep in deps}
    policy_edges = {(name, dep) for name, svc in topology.services.items() for dep in svc.depends_on}
    assert set(model.services) == set(topology.services)
    assert synth_edges == policy_edges
