"""The generator config: the shipped file loads; every mistake names the file, the field and a fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import ConfigError, SpecError
from engine.telemetry.synth import DEFAULT_CONFIG, INCIDENT_KINDS, generate, load_config


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _problems(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    path = _write(tmp_path, raw)
    with pytest.raises(SpecError) as info:
        load_config(path)
    assert all(p.file == str(path) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def _service(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in raw["services"] if s["name"] == name)


def test_shipped_config_loads_with_six_services_and_every_kind() -> None:
    cfg = load_config()
    assert [s.name for s in cfg.services] == [
        "vector-db",
        "feature-store",
        "inference-a",
        "inference-b",
        "gateway",
        "ingestion",
    ]
    assert set(cfg.incidents.kinds) == set(INCIDENT_KINDS)
    assert cfg.interval_s == 10


def test_a_mistyped_key_names_the_field_and_suggests_the_right_one(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    _service(raw, "inference-a")["capcity"] = 10
    (problem,) = _problems(tmp_path, raw)
    assert "services[2]: unknown key 'capcity' (did you mean 'capacity'?)" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    _service(raw, "vector-db")["capacity"] = -5
    raw["traffic"]["peak_hour"] = "noon"
    raw["incidents"]["kinds"]["bad_deploy"]["magnitude"] = [0.3, 0.1]
    problems = _problems(tmp_path, raw)
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "services[0].capacity: Input should be greater than 0 (got -5)" in text
    assert "traffic.peak_hour" in text and "'noon'" in text
    assert "incidents.kinds.bad_deploy: magnitude is [low, high] but 0.3 > 0.1; swap the two numbers" in text


def test_unknown_role_lists_the_roles(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    _service(raw, "gateway")["role"] = "proxy"
    (problem,) = _problems(tmp_path, raw)
    assert (
        "services[4]: unknown role 'proxy' (one of: feature_store, gateway, inference, ingestion" in problem
    )


def test_unknown_dependency_suggests_the_closest_service(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    _service(raw, "gateway")["depends_on"] = ["inference-a", "inferense-b"]
    (problem,) = _problems(tmp_path, raw)
    assert "services[4].depends_on: unknown service 'inferense-b' (did you mean 'inference-b'?)" in problem


def test_services_out_of_dependency_order_say_what_to_move(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    raw["services"] = [raw["services"][4], *raw["services"][:4], raw["services"][5]]  # gateway first
    problems = _problems(tmp_path, raw)
    assert problems[0].endswith(
        "services[0].depends_on: 'inference-a' is listed after 'gateway' (move 'inference-a' above "
        "'gateway': services are in dependency order (leaves first) and --services N takes the first N)"
    )


def test_a_kind_on_a_role_that_cannot_host_it(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    raw["incidents"]["kinds"]["stale_index"]["roles"] = ["inference"]
    (problem,) = _problems(tmp_path, raw)
    assert (
        "incidents.kinds.stale_index.roles: stale_index cannot happen on inference (use some of vector_db)"
        in problem
    )


def test_replica_template_must_be_an_inference_service(tmp_path: Path, shipped: dict) -> None:
    raw = copy.deepcopy(shipped)
    raw["scaling"]["replica_template"] = "gateway"
    (problem,) = _problems(tmp_path, raw)
    assert "scaling.replica_template: 'gateway' is not an inference service" in problem


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("interval_s: 10\nstart: : 2026-01-01\nservices: []\n")
    with pytest.raises(SpecError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "--config" in (info.value.hint or "")


def test_a_minimal_config_works_on_defaults(tmp_path: Path) -> None:
    raw = {
        "services": [
            {"name": "vector-db", "role": "vector_db", "capacity": 100},
            {"name": "inference-a", "role": "inference", "capacity": 40, "depends_on": ["vector-db"]},
        ],
        "incidents": {
            "kinds": {"stale_index": {"per_day": 2, "duration_minutes": [30, 60], "magnitude": [0.3, 0.4]}}
        },
    }
    data = generate(load_config(_write(tmp_path, raw)), days=1, seed=0)
    assert data.topology == {"vector-db": [], "inference-a": ["vector-db"]}
    assert set(data.incidents["kind"]) == {"stale_index"}
