"""Engine configuration: one declared table of settings, from a YAML file plus the environment.

Why declared and strict: a typo in a production config must fail at start with the key, the expected
type and a hint, never be silently ignored (Datasette's settings table is the model). Precedence:
defaults < the YAML file < ``SELFHEAL_ENGINE_<KEY>`` environment variables (top-level scalar keys;
``SELFHEAL_ENGINE_TOKEN`` is the usual one, so the token need not sit in a file).

``selfheal run`` accepts either a bundle directory (components come from the bundle) or a YAML file
with these settings and ``components:`` naming a bundle or a ``file.py:function`` factory.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import ConfigError, SpecError
from engine.runtime.client import URL_ENV
from engine.runtime.journal_db import is_url
from engine.runtime.ladder import Mode
from engine.runtime.notify import Channel
from engine.runtime.safeguards import GlobalLimits, MaintenanceWindow
from engine.specs import did_you_mean, expect_mapping, load_yaml, problems_from

ENV_PREFIX = "SELFHEAL_ENGINE_"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrometheusTarget(_Strict):
    """Scrape ``url`` every ``interval_s``; ``mapping`` (YAML) turns metric names + labels into points."""

    url: str
    interval_s: float = Field(5.0, gt=0)
    mapping: Path


class RedisSource(_Strict):
    """Telemetry through Redis Streams, shared by engine replicas (``engine.runtime.bus``).

    Points live in ``partitions`` streams ``STREAM:0`` … ``STREAM:P-1`` (a stable hash of the
    service picks one); writers that cannot hash write to ``STREAM:in`` and the replicas route.
    Each replica leases partitions in the journal's PostgreSQL (``engine.runtime.leases``).
    """

    url: str = Field(description="redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS)")
    stream: str = Field("selfheal:telemetry", min_length=1, description="the streams' common prefix")
    partitions: int = Field(
        12, ge=1, le=1024, description="partition streams; fixed for the life of the streams"
    )
    group: str = Field("selfheal", min_length=1, description="the replicas' consumer group")
    lease_s: float = Field(
        10.0,
        ge=1,
        description="a replica that has not renewed its partitions for this long loses them; another "
        "takes them over (renewed every lease_s / 4)",
    )
    max_len: int = Field(
        1_000_000, ge=1000, description="entries kept per stream (older ones are trimmed, approximately)"
    )
    read_count: int = Field(500, ge=1, le=100_000, description="entries read per call")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be redis://HOST:PORT/DB, rediss://... or unix://PATH")
        return value


class Sources(_Strict):
    http: bool = Field(True, description="accept pushes on POST /v1/telemetry (false: 404)")
    files: list[str] = Field(default_factory=list, description="NDJSON files to tail; '-' is stdin")
    from_start: bool = Field(False, description="read files from their start instead of their end")
    prometheus: list[PrometheusTarget] = Field(default_factory=list)
    redis: RedisSource | None = Field(
        None,
        description="replicas: read telemetry from Redis Streams partitions this engine leases (pushes "
        "over HTTP then go into the streams); needs a PostgreSQL journal",
    )


class Limits(_Strict):
    max_actions_per_hour: int = Field(30, ge=1)
    max_failures_per_hour: int = Field(5, ge=1)
    max_concurrent: int = Field(4, ge=1)

    def to_global(self) -> GlobalLimits:
        return GlobalLimits(self.max_actions_per_hour, self.max_failures_per_hour, self.max_concurrent)


class Maintenance(_Strict):
    services: list[str]
    start: datetime
    end: datetime
    reason: str = ""

    def window(self) -> MaintenanceWindow:
        return MaintenanceWindow(tuple(self.services), _epoch(self.start), _epoch(self.end), self.reason)


class EngineSettings(_Strict):
    """Every setting of ``selfheal run`` (name, type, default, meaning)."""

    components: str | None = Field(None, description="bundle directory or file.py:function factory")
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="public keys (KEY.pub files or folders of them) a bundle must be signed with; "
        "SELFHEAL_TRUSTED_KEYS and HOME/keys/trusted/ are trusted too",
    )
    allow_unsigned: bool = Field(
        False, description="local development only: run an unsigned or untrusted bundle (logged as a warning)"
    )
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs a token")
    port: int = Field(8787, ge=0, le=65535)
    token: str | None = Field(None, description="bearer token for approvals, pause/resume and non-loopback")
    approver_tokens: dict[str, str] = Field(
        default_factory=dict, description="named tokens: the approver recorded is the token's name"
    )
    journal: str | None = Field(
        None,
        description="SQLite journal file (default HOME/journals/engine.sqlite), or a PostgreSQL URL "
        "(postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE) for a journal on a server",
    )
    dead_letter: Path | None = Field(None, description="rejected points, NDJSON (default beside the journal)")
    dead_letter_max_bytes: int = Field(
        64 * 2**20, ge=4096, description="the dead-letter file is rotated (to .1, .2, ...) past this size"
    )
    dead_letter_files: int = Field(3, ge=1, le=100, description="rotated dead-letter files kept")
    dead_letter_raw_bytes: int = Field(
        2048, ge=64, description="of each refused input kept in the dead-letter file (the rest is cut)"
    )
    max_series: int = Field(
        100_000, ge=1, description="distinct (service, metric) series held; a new one beyond is refused"
    )
    series_idle_s: float = Field(
        3600.0, gt=0, description="a series not seen for this long is forgotten (its state freed)"
    )
    max_name_length: int = Field(256, ge=1, description="longest service or metric name, in characters")
    name_pattern: str | None = Field(
        None, description="regular expression every service and metric name must match (whole name)"
    )
    queue_max_points: int = Field(500_000, ge=1, description="accepted-but-unscored points before 429")
    max_request_points: int = Field(100_000, ge=1, description="largest batch one request may carry")
    max_request_bytes: int = Field(
        32 * 2**20,
        ge=1,
        description="largest telemetry body: refused (413) on its Content-Length, or while it streams in",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a telemetry body not received within this is refused (408), its connection closed",
    )
    tick_s: float = Field(0.05, gt=0, description="scoring tick: longest a point waits to be scored")
    state_snapshot_s: float | None = Field(
        60.0,
        ge=0,
        description="the detector's per-series states are written beside the journal this often (by the "
        "engine or each scoring worker), and read back at start (0: after every tick; null: never, a "
        "restart re-warms every series)",
    )
    scores_file: Path | None = Field(
        None, description="every scored row appended here, NDJSON (ts, service, score)"
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="scoring processes (services partitioned across them); 0 scores in-process. Workers "
        "are spawned: a script embedding the engine needs the `if __name__ == '__main__':` guard",
    )
    sources: Sources = Field(default_factory=Sources)
    limits: Limits = Field(default_factory=Limits)
    maintenance: list[Maintenance] = Field(default_factory=list)
    approval_ttl_s: float = Field(900.0, gt=0, description="default TTL when a policy gives none")
    notifications: list[Channel] = Field(
        default_factory=list,
        description="webhooks told of approval requests, escalations and failed verifications",
    )
    modes: dict[str, Mode] = Field(
        default_factory=dict,
        description="the autonomy ladder: POLICY or POLICY/SERVICE -> observe, suggest or auto (default)",
    )
    public_url: str | None = Field(
        None, description="the engine's address as people reach it, for links in notifications"
    )
    action_timeout_s: float = Field(10.0, gt=0)
    verify_interval_s: float = Field(1.0, gt=0, description="how often steady states are checked")
    stale_decision_s: float = Field(
        600.0,
        ge=0,
        description="after a crash, decisions younger than this still execute; older are reported",
    )
    replay_horizon_s: float = Field(3600.0, ge=0, description="events replayed into the policy host at start")
    drain_timeout_s: float = Field(30.0, gt=0, description="SIGTERM: time allowed to score what was accepted")

    @model_validator(mode="after")
    def _replicas_share_a_journal(self) -> EngineSettings:
        if self.sources.redis is not None:
            if self.journal is None or not is_url(self.journal):
                raise ValueError(
                    "sources.redis needs `journal: postgresql://...`: replicas share the journal and "
                    "lease their partitions in it"
                )
            if self.workers:
                raise ValueError("sources.redis scores in-process: set workers: 0 (or drop sources.redis)")
        return self

    @field_validator("name_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        if value is not None and len(value.strip()) < 8:
            raise ValueError("the token must have at least 8 characters")
        return value

    def require_safe_binding(self, source: str) -> None:
        """Refuse to listen beyond loopback without a token: approvals and pause would be open to anyone."""
        if self.host not in LOOPBACK and not self.token:
            raise ConfigError(
                f"{source}: host {self.host!r} is not loopback and no token is set",
                hint=f"set `token:` in the config or {ENV_PREFIX}TOKEN, or bind to 127.0.0.1",
            )

    def link_base(self) -> str:
        """Where links in notifications point: ``public_url``, else the address the engine binds."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def journal_path(self, home_journals: Path) -> Path | str:
        """The journal's file, or its PostgreSQL URL (``engine.runtime.journal_db``)."""
        if self.journal is None:
            return home_journals / "engine.sqlite"
        return self.journal if is_url(self.journal) else Path(self.journal)

    def dead_letter_path(self, home_journals: Path) -> Path:
        journal = self.journal_path(home_journals)
        local = home_journals / "engine.sqlite" if is_url(journal) else Path(journal)
        return self.dead_letter or local.with_name("dead-letter.ndjson")

    def states_path(self, journal: Path | str) -> Path | str:
        """The detector's per-series states (``engine.runtime.states``): beside the journal's
        file, or in the journal's PostgreSQL database (where replicas share them)."""
        if is_url(journal):
            return journal
        journal = Path(journal)
        return journal.with_name(f"{journal.stem}.states.sqlite")


def load_settings(
    path: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> EngineSettings:
    """Read, merge and validate; every problem is reported at once with a 'did you mean' hint.

    A problem names where its value came from (the file, the environment variable or the option),
    since a value that overrides the file is not in the file a person would go and fix.
    """
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        hint = "fix the engine config; `selfheal run --help` lists every setting"
        loaded = load_yaml(path, hint=hint)
        problems = expect_mapping(loaded, source) if loaded is not None else []
        if problems:
            raise SpecError(problems, hint=hint)
        raw.update(loaded or {})
    env = os.environ if environ is None else environ
    fields = EngineSettings.model_fields
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == URL_ENV:  # the operator commands' variable
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in fields:
            raise ConfigError(
                f"environment variable {key} names no engine setting",
                hint=did_you_mean(name, fields) or f"settings: {', '.join(fields)}",
            )
        raw[name] = value
        origin[name] = f"environment variable {key}"
    for name, value in (overrides or {}).items():
        raw[name] = value
        origin[name] = f"option --{name.replace('_', '-')}"
    try:
        return EngineSettings.model_validate(raw)
    except ValidationError as exc:
        problems = [
            replace(p, file=origin.get(p.path.split(".")[0].split("[")[0], source))
            for p in problems_from(exc, file=source, model=EngineSettings)
        ]
        raise SpecError(problems, hint="see `selfheal run --help`") from exc


def _epoch(value: datetime) -> float:
    from datetime import UTC

    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
