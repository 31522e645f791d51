"""Tracking location, registered models and the champion/challenger gate.

Promotion moves the registry alias ``champion`` (stages are deprecated in MLflow). A challenger
moves it only when it beats the champion on the same evaluation: the same data fingerprint, the
same evaluation key (data selection, features, split, level) and the same selection metric.
``force`` overrides the gate and is recorded (tag ``selfheal.force_reason``). Every move of the
alias is appended to the registered model's tag ``selfheal.champion_history`` so that rollback
can move it back, repeatedly, without guessing from version numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import TrackingError
from engine.home import Home, use_tracking

logger = logging.getLogger(__name__)

CHAMPION = "champion"
#: The registered model name when a spec or a command names none.
DEFAULT_MODEL = "selfheal-detector"
HISTORY_TAG = "selfheal.champion_history"

# Tags written on runs by the experiment runner and read here.
TAG_KIND = "selfheal.kind"
TAG_METRIC = "selfheal.metric"
TAG_HIGHER = "selfheal.higher_is_better"
TAG_FINGERPRINT = "selfheal.data_fingerprint"
TAG_EVAL_KEY = "selfheal.evaluation_key"
TAG_MODEL_URI = "selfheal.model_uri"
TAG_BEST_RUN = "selfheal.best_run_id"
TAG_DETECTOR = "selfheal.detector"
TAG_SPEC = "selfheal.spec_name"


def resolve_tracking_uri(home: Home, explicit: str | None = None) -> str:
    """``--tracking-uri``, then ``MLFLOW_TRACKING_URI``, then SQLite in the home folder."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or home.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ensure_experiment(name: str, *, tracking_uri: str, home: Home | None = None) -> str:
    """Experiment id for ``name``, created on first use.

    On a local SQLite store the artifacts go under the home folder (MLflow's default would be
    ``./mlruns`` relative to wherever the command ran); a server decides for itself.
    """
    import mlflow

    use_tracking(tracking_uri)
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment '{name}' is deleted",
                hint="restore it (mlflow experiments restore) or set tracking.experiment in the spec",
            )
        return str(existing.experiment_id)
    location = None
    if home is not None and tracking_uri.startswith("sqlite:"):
        location = (home.mlflow_artifacts / name).resolve().as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    use_tracking(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(
            f"run '{run_id}' not found in {client.tracking_uri}",
            hint="copy a run id from `selfheal experiment run` output or the MLflow UI; check --tracking-uri",
        ) from exc


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _history(client: Any, name: str) -> list[str]:
    model = client.get_registered_model(name)
    raw = model.tags.get(HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class PromotionResult:
    """What ``promote`` decided and why."""

    name: str
    version: str
    run_id: str
    promoted: bool
    reason: str
    metric: str
    challenger_value: float | None
    champion_version: str | None = None
    champion_value: float | None = None
    forced: bool = False

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "NOT PROMOTED"
        return f"{verdict}: {self.name} version {self.version} (run {self.run_id}): {self.reason}"


def promote(
    run_id: str,
    name: str,
    *,
    tracking_uri: str,
    force: bool = False,
    reason: str | None = None,
) -> PromotionResult:
    """Register the run's model under ``name`` and move ``champion`` to it if it wins the gate.

    A sweep's parent run id stands for its best child. Promoting the same run again reuses its
    version (idempotent). The version is registered even when it loses, tagged with the verdict.
    """
    from mlflow.exceptions import MlflowException

    if force and not (reason and reason.strip()):
        raise TrackingError("--force needs a reason", hint='add --reason "why the gate is overridden"')
    client = _client(tracking_uri)
    run = _get_run(client, run_id)
    tags = run.data.tags
    if tags.get(TAG_KIND) == "sweep":
        best = tags.get(TAG_BEST_RUN)
        if not best:
            raise TrackingError(f"sweep run {run_id} has no best child", hint="rerun the experiment")
        run = _get_run(client, best)
        tags = run.data.tags
    run_id = run.info.run_id
    model_uri = tags.get(TAG_MODEL_URI)
    metric = tags.get(TAG_METRIC)
    if not model_uri or not metric:
        raise TrackingError(
            f"run {run_id} has no selfheal model (tags {TAG_MODEL_URI}, {TAG_METRIC} missing)",
            hint="promote a configuration run logged by `selfheal experiment run`",
        )
    higher = tags.get(TAG_HIGHER, "true") == "true"
    value = _finite(run.data.metrics.get(metric))

    with contextlib.suppress(MlflowException):  # already there
        client.create_registered_model(name, description="selfheal anomaly detector (calibrated scores)")
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if found:
        version = max(found, key=lambda v: int(v.version))
    else:
        version = client.create_model_version(
            name,
            source=model_uri,
            run_id=run_id,
            tags={TAG_METRIC: metric},
            model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None,
        )
    ver = str(version.version)

    champion = _champion(client, name)
    result = PromotionResult(name, ver, run_id, False, "", metric, value, forced=force)
    if champion is not None:
        result.champion_version = str(champion.version)
    if champion is not None and str(champion.version) == ver:
        result.reason = "already the champion"
        return result
    if champion is None:
        result.promoted, result.reason = True, "no champion yet"
    else:
        champ_run = _get_run(client, champion.run_id)
        result.champion_value = _finite(champ_run.data.metrics.get(metric))
        mismatch = _comparability(tags, champ_run.data.tags, metric)
        if mismatch:
            result.reason = f"not comparable with champion v{champion.version}: {mismatch}"
        elif value is None:
            result.reason = f"challenger has no finite '{metric}'"
        elif result.champion_value is None or _beats(value, result.champion_value, higher):
            result.promoted = True
            result.reason = (
                f"{metric} {_fmt(value)} beats champion v{champion.version} ({_fmt(result.champion_value)})"
            )
        else:
            result.reason = (
                f"{metric} {_fmt(value)} does not beat champion v{champion.version} "
                f"({_fmt(result.champion_value)})"
            )
        if not result.promoted and force:
            result.promoted = True
            result.reason = f"forced over the gate ({result.reason}); reason: {reason}"

    if result.promoted:
        client.set_registered_model_alias(name, CHAMPION, ver)
        history = [*_history(client, name), ver]
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        client.set_model_version_tag(name, ver, "selfheal.promoted_at", _now())
        client.set_model_version_tag(name, ver, "selfheal.gate", "promoted")
        if force:
            client.set_model_version_tag(name, ver, "selfheal.forced", "true")
            client.set_model_version_tag(name, ver, "selfheal.force_reason", str(reason))
    else:
        client.set_model_version_tag(name, ver, "selfheal.gate", f"rejected: {result.reason}"[:4900])
    logger.info("%s", result.summary())
    return result


def _comparability(challenger: dict[str, str], champion: dict[str, str], metric: str) -> str:
    """Empty when the two runs were judged on the same evaluation, else what differs."""
    diffs = []
    for tag, what in ((TAG_FINGERPRINT, "data fingerprint"), (TAG_EVAL_KEY, "evaluation key")):
        if challenger.get(tag) != champion.get(tag):
            diffs.append(f"{what} {challenger.get(tag)} != {champion.get(tag)}")
    if champion.get(TAG_METRIC) != metric:
        diffs.append(f"metric {metric} != {champion.get(TAG_METRIC)}")
    return "; ".join(diffs)


def _beats(value: float, champion: float, higher: bool) -> bool:
    return value > champion if higher else value < champion


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass
class RollbackResult:
    name: str
    from_version: str
    to_version: str


def rollback(name: str, *, tracking_uri: str) -> RollbackResult:
    """Move ``champion`` back to the version that held it before the current one."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        history = _history(client, name)
    except MlflowException as exc:
        raise TrackingError(f"no registered model '{name}'", hint="selfheal models list NAME") from exc
    current = _champion(client, name)
    if current is None or len(history) < 2:
        raise TrackingError(
            f"'{name}' has no previous champion to roll back to",
            hint="promote another version first (selfheal promote RUN_ID --name NAME)",
        )
    from_version = history.pop()
    to_version = history[-1]
    client.set_registered_model_alias(name, CHAMPION, to_version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(name, from_version, "selfheal.rolled_back_at", _now())
    logger.info("rolled %s champion back from v%s to v%s", name, from_version, to_version)
    return RollbackResult(name, from_version, to_version)


@dataclass
class VersionRow:
    version: str
    aliases: list[str]
    run_id: str
    metric: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None


def list_versions(name: str, *, tracking_uri: str) -> list[VersionRow]:
    """Every version of ``name`` with its aliases and the metrics of the run that produced it."""
    client = _client(tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise TrackingError(
            f"no registered model '{name}' (or it has no versions)",
            hint="selfheal promote RUN_ID --name NAME",
        )
    by_version: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        metrics: dict[str, float] = {}
        if v.run_id:
            try:
                metrics = dict(client.get_run(v.run_id).data.metrics)
            except Exception:  # the run may have been deleted; the version still lists
                metrics = {}
        rows.append(
            VersionRow(
                version=str(v.version),
                aliases=sorted(by_version.get(str(v.version), [])),
                run_id=v.run_id or "",
                metric=(v.tags or {}).get(TAG_METRIC),
                metrics=metrics,
                tags=dict(v.tags or {}),
                created=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC)
                if v.creation_timestamp
                else None,
            )
        )
    return rows


def resolve_version(model_uri: str, *, tracking_uri: str) -> Any:
    """The fixed ModelVersion behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise TrackingError(f"'{model_uri}' is not a registry URI", hint="use models:/NAME@champion")
    client = _client(tracking_uri)
    body = model_uri.removeprefix("models:/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = body.partition("/")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise TrackingError(
            f"cannot resolve {model_uri} in {tracking_uri}",
            hint="selfheal models list NAME shows versions and aliases",
        ) from exc


def download_model(model_uri: str, *, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Download a logged model; aliases are resolved to a fixed version first."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    use_tracking(uri)
    if model_uri.startswith("models:/") and "@" in model_uri:
        v = resolve_version(model_uri, tracking_uri=uri)
        model_uri = f"models:/{v.name}/{v.version}"
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst) if dst else None)
    return Path(local)
