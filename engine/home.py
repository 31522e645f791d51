"""Where selfheal keeps its state.

All state (the DuckDB store, MLflow's database and artifacts, quarantine files, bundles, signing
keys, journals, executed notebooks) lives under one home folder so that a team can point every
command at the same place, and a demo can be thrown away by deleting one directory. Resolution
order: an explicit path (the CLI's ``--home``), then ``SELFHEAL_HOME``, then ``./.selfheal``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ENV_VAR = "SELFHEAL_HOME"
DEFAULT_DIR = ".selfheal"


@dataclass(frozen=True)
class Home:
    """The home folder and the well-known paths inside it."""

    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None = None) -> Home:
        raw = explicit or os.environ.get(ENV_VAR) or DEFAULT_DIR
        return cls(Path(raw).expanduser().resolve())

    def ensure(self) -> Home:
        """Create the folder tree (idempotent) and return self."""
        for path in (self.root, self.quarantine, self.bundles, self.journals, self.notebooks_out):
            path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def telemetry_db(self) -> Path:
        return self.root / "telemetry.duckdb"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        """Default MLflow tracking URI: SQLite in the home folder (MLflow 3 refuses the file store)."""
        return f"sqlite:///{self.mlflow_db}"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def keys(self) -> Path:
        """Bundle signing: this host's key (``bundle-signing.key``) and pinned public keys (``trusted/``)."""
        return self.root / "keys"

    @property
    def trusted_keys(self) -> Path:
        """Public keys (``*.pub``) whose bundle signatures this host's engine accepts."""
        return self.keys / "trusted"

    @property
    def journals(self) -> Path:
        return self.root / "journals"

    @property
    def notebooks_out(self) -> Path:
        return self.root / "notebooks"

    def new_run(self, *parts: str) -> Path:
        """A fresh folder for one run under ``HOME/parts/``: its start time, then -2, -3... if taken.

        Why fresh every time: a chaos run's engine journal holds its cooldowns, hourly limits and
        decisions; a second run reusing the folder would inherit them (its remedies blocked, the old
        decisions judged as its own unexpected actions). Created here, so two runs started in the
        same second never share one.
        """
        parent = self.root.joinpath(*parts)
        parent.mkdir(parents=True, exist_ok=True)
        stem = datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1, 10_000):
            folder = parent / (stem if n == 1 else f"{stem}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
        raise FileExistsError(f"{parent}: no free run folder for {stem}; remove old runs")


def use_tracking(uri: str) -> None:
    """Point MLflow's fluent API (tracking and registry) at ``uri``.

    MLflow keeps these as process globals; every public function here calls this first so that two
    homes in one process (tests, notebooks) never write into each other. ``mlflow.set_tracking_uri``
    also exports ``MLFLOW_TRACKING_URI`` into the environment, which would then outrank the home
    folder in ``resolve_tracking_uri`` for the rest of the process: the environment is restored.
    """
    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
