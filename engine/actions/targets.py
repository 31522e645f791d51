"""Where actions land: the targets file (rules/targets.yaml) maps each service to a backend.

```yaml
defaults:                      # merged under every service, block by block
  backend: simulator
  simulator: {url: http://127.0.0.1:8750}
services:
  inference-a:
    backend: kubernetes
    kubernetes: {api: https://k8s.example:6443, namespace: ai, deployment: inference-a,
                 container: server, image: registry.example/inference, token_env: KUBE_TOKEN}
  vector-db:
    backend: http
    http: {url: http://vector-db.internal:9000/admin}
commands:
  allow: [/usr/local/bin/flush-cache]   # argv[0] of the `command` action must be listed here
```

Secrets never live in this file: ``token_env`` names the environment variable that holds a bearer token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from engine.errors import Problem

BackendName = Literal["http", "kubernetes", "simulator"]
TARGETS_FILE = "targets.yaml"
DEFAULT_SIMULATOR_URL = "http://127.0.0.1:8750"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Auth(_Model):
    token_env: str | None = Field(default=None, description="environment variable holding a bearer token")
    timeout_s: float = Field(default=10.0, gt=0)

    def bearer(self) -> str | None:
        """The token from the environment (read at call time so rotation needs no restart)."""
        return os.environ.get(self.token_env) if self.token_env else None


class HttpConfig(_Auth):
    """The service's own admin endpoint: ``POST {url}/{action}`` with the params as JSON."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    dedup: bool = Field(
        default=False,
        description="the endpoint applies a request at most once per Idempotency-Key (retries are safe)",
    )


class SimulatorConfig(_Auth):
    """The simulated platform's admin API (the contract: ``engine.simulation.server``)."""

    url: str = DEFAULT_SIMULATOR_URL


class KubernetesConfig(_Auth):
    """One Deployment behind the service, reached through the Kubernetes API server."""

    api: str = Field(description="API server base URL, e.g. https://10.0.0.1:6443")
    namespace: str = "default"
    deployment: str | None = Field(default=None, description="defaults to the service name")
    container: str | None = Field(default=None, description="container whose image carries the model")
    image: str | None = Field(default=None, description="image repository; rollback sets image:VERSION")
    model_annotation: str = "selfheal.io/model-version"
    verify_tls: bool | str = True


class ServiceTarget(_Model):
    backend: BackendName | None = None
    http: HttpConfig | None = None
    simulator: SimulatorConfig | None = None
    kubernetes: KubernetesConfig | None = None


class CommandPolicy(_Model):
    allow: list[str] = Field(
        default_factory=list, description="absolute paths of the executables the command action may run"
    )

    @field_validator("allow")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        """A bare name would be looked up on PATH at run time: whoever controls PATH picks the program."""
        for item in value:
            if not os.path.isabs(item):
                raise ValueError(
                    f"{item!r} is not an absolute path; list the full path of each program "
                    f"(e.g. /usr/local/bin/{os.path.basename(item) or 'flush-cache'}; `command -v "
                    f"{item}` prints it)"
                )
        return value


class Target(_Model):
    """A service resolved to one backend and its configuration."""

    service: str
    backend: BackendName
    http: HttpConfig | None = None
    simulator: SimulatorConfig | None = None
    kubernetes: KubernetesConfig | None = None


class TargetsConfig(_Model):
    defaults: ServiceTarget = Field(default_factory=lambda: ServiceTarget(backend="simulator"))
    services: dict[str, ServiceTarget] = Field(default_factory=dict)
    commands: CommandPolicy = Field(default_factory=CommandPolicy)

    def token_env_names(self) -> set[str]:
        """Every environment variable this file names as holding a token (never passed to a child)."""
        blocks = [self.defaults, *self.services.values()]
        return {
            auth.token_env
            for block in blocks
            for auth in (block.http, block.simulator, block.kubernetes)
            if auth is not None and auth.token_env
        }

    def target(self, service: str) -> Target:
        """The backend for ``service``: its own entry merged over ``defaults``."""
        own = self.services.get(service, ServiceTarget())
        merged: dict[str, Any] = {
            "service": service,
            "backend": own.backend or self.defaults.backend or "simulator",
        }
        for block in ("http", "simulator", "kubernetes"):
            base = getattr(self.defaults, block)
            mine = getattr(own, block)
            data = {
                **(base.model_dump(exclude_unset=True) if base else {}),
                **(mine.model_dump(exclude_unset=True) if mine else {}),
            }
            if data or block == merged["backend"]:
                merged[block] = data
        if merged["backend"] == "simulator" and not merged.get("simulator"):
            merged["simulator"] = {}
        return Target.model_validate(merged)


def targets_for_policy(policy_path: Path) -> Path:
    """``targets.yaml`` beside a policy file or inside a policy folder."""
    folder = policy_path if policy_path.is_dir() else policy_path.parent
    return folder / TARGETS_FILE


def load_targets(path: Path | str) -> TargetsConfig:
    """Parse and check a targets file; every problem is reported at once (SpecError)."""
    return load_targets_text(None, source=path)


def load_targets_text(text: str | bytes | None, *, source: Path | str = TARGETS_FILE) -> TargetsConfig:
    """Parse and check targets from ``text`` (the file's content); ``source`` names it in problems.

    A bundle passes the bytes whose sha256 it just verified, so what runs is what was checked (a
    second read of the file could see a swapped file). ``text=None`` reads ``source`` from disk.
    """
    from pydantic import ValidationError

    from engine.errors import SpecError
    from engine.specs import expect_mapping, problems_from, read_yaml

    file = Path(source)
    data, problems = read_yaml(file, text)
    problems = problems or expect_mapping(data, str(file))
    if problems:
        raise SpecError(problems, hint="fix the targets file")
    try:
        config = TargetsConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            problems_from(exc, file=str(file), model=TargetsConfig), hint="fix the targets file"
        ) from exc
    bad: list[Problem] = []
    for service in config.services:
        try:
            config.target(service)
        except ValidationError as exc:
            bad.extend(problems_from(exc, file=str(file), model=Target, prefix=f"services.{service}"))
    if bad:
        raise SpecError(bad, hint="each service's backend block must be complete after merging defaults")
    return config
