"""The deployment files in ``docs/deploy`` hold together without Docker: the compose file parses,
every service has an image, what it mounts exists, what it depends on is a service, the engine
config it runs loads as ``selfheal run`` loads it and points at the compose file's Redis and
PostgreSQL, and the collector writes into the inbox of the stream the engines read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO

from engine.runtime.bus import INBOX, stream_key
from engine.runtime.config import load_settings

DEPLOY = REPO / "docs" / "deploy"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def engines(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in spec["services"].items() if name.startswith("engine-")}


def test_every_service_has_an_image_and_its_mounts_and_dependencies_exist() -> None:
    spec = compose()
    services = spec["services"]
    assert {"redis", "postgres", "collector"} <= set(services) and len(engines(spec)) == 3
    ports = []
    for name, service in services.items():
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), (name, service.get("image"))
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):  # a file of the repository (named volumes are declared)
                assert (DEPLOY / source).resolve().exists(), (name, volume)
            elif not source.startswith("$"):
                assert source in spec["volumes"], (name, volume)
        ports += [p.split(":")[0] for p in service.get("ports", [])]
    assert len(ports) == len(set(ports))


def test_the_engines_run_the_config_that_loads_and_reaches_the_compose_servers(tmp_path: Path) -> None:
    spec = compose()
    for name, service in engines(spec).items():
        command = " ".join(service["command"])
        config = re.search(r"selfheal run (\S+)", command)
        assert config, (name, command)
        mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert config[1] in mounted, (name, config[1])
        assert (DEPLOY / mounted[config[1]]).resolve() == DEPLOY / "engine.yaml"
    settings = load_settings(DEPLOY / "engine.yaml", environ={"SELFHEAL_ENGINE_TOKEN": "a-long-token"})
    settings.require_safe_binding("engine.yaml")
    redis = settings.sources.redis
    assert redis is not None and settings.journal is not None
    assert re.match(r"redis://redis:\d+/", redis.url) and "@postgres:5432/" in settings.journal
    assert settings.components == "/bundle" and [str(k) for k in settings.trusted_keys] == ["/keys"]
    collector = yaml.safe_load((DEPLOY / "connect.yaml").read_text())
    output = collector["output"]["redis_streams"]
    assert output["stream"] == stream_key(redis.stream, INBOX)
    assert output["url"].split("/")[2] == redis.url.split("/")[2]  # the same server
    assert output["body_key"] == "body"
