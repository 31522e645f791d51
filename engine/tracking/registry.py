"""Tracking location, registered models and the champion/challenger gate.

Promotion moves the registry alias ``champion`` (stages are deprecated in MLflow). The gate judges
detection AND healing, because a detector with the better F1 on history can still heal fewer
faults once the engine acts on its events:

- detection: the challenger beats the champion's selection metric on the same evaluation (the
  same data fingerprint, evaluation key and metric), and its mean detection delay and false alarms
  per day are no worse than the champion's beyond a stated tolerance (``DETECTION_LIMITS``);
- closed loop (the ``closed_loop.*`` figures ``selfheal chaos assess`` logs into a candidate's
  run, ``engine.chaos.assess``): on the same campaign (seed and size) it heals at least as
  many faults as the champion, and it acts on no victim, in no quiet control (a false action) and
  runs no high-risk action without an approval. A challenger without closed-loop figures is not
  comparable with a champion that has them, nor are figures measured under other policies (the
  fingerprint of rules/ is tagged with the figures: a rules/ change makes old figures stale).

With no champion yet there is nothing to beat, but a first champion is not free: when it was
assessed it must pass the floor (at least one fault healed, no action on a victim, in a quiet
control or high-risk without approval); when it never was, it is promoted on detection alone and
the verdict says so (``selfheal demo`` always assesses before it promotes).

The verdict is a table, champion against challenger per criterion (``PromotionResult.table``),
printed by the CLI, tagged on the model version and logged into the challenger's run. ``force``
overrides the gate and is recorded (tag ``selfheal.force_reason``). Every move of the alias is
appended to the registered model's tag ``selfheal.champion_history`` so that rollback can move it
back, repeatedly, without guessing from version numbers.
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
from engine.tables import text_table

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
#: On a sweep run: its candidate that came first in a closed-loop assessment (promote prefers it).
TAG_BEST_CLOSED_LOOP = "selfheal.best_closed_loop_run"
TAG_CL_SEED = "selfheal.closed_loop.seed"
TAG_CL_N = "selfheal.closed_loop.n"
#: The fingerprint of the policies (rules/) the campaign ran under: healing figures are the
#: detector's AND the policies', so figures under other rules are not comparable.
TAG_CL_POLICY = "selfheal.closed_loop.policy"
#: Prefix of the closed-loop figures in a candidate's run (``engine.chaos.campaign_run.log_campaign``).
CL = "closed_loop."
#: Detection figures that decide beside the selection metric, (words in the verdict, relative and
#: absolute tolerance): a challenger may be worse than the champion by at most the larger of the
#: two (mean detection delay: 25 % or 5 min; false alarms per day: 25 % or one a day). Why a
#: tolerance: a better F1 often costs a little delay or a few alarms, which is a fair trade; an F1
#: bought with alarms an hour later, or twice the pages a day, is not.
DETECTION_LIMITS = {
    "mean_delay_s": ("detection delay (s)", 0.25, 300.0),
    "false_alarms_per_day": ("false alarms/day", 0.25, 1.0),
    # alarms in windows operators marked false or whose action they rejected: no more than before
    "operator_false_alarms": ("alarms operators said no to", 0.0, 0.0),
}
#: Closed-loop counts a challenger must keep at zero, with the words the verdict uses.
CL_MUST_BE_ZERO = {
    "victim_actions": "actions on victims",
    "control_actions": "false actions (quiet controls)",
    "unapproved_high_risk_actions": "high-risk actions without approval",
}


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


def tracking_client(tracking_uri: str) -> Any:
    """An MLflow client on ``tracking_uri`` for runs and the registry (both live in one store)."""
    from mlflow import MlflowClient

    use_tracking(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def get_run(client: Any, run_id: str) -> Any:
    """The run ``run_id``, or a TrackingError that says where to find a run id."""
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


def champion_version(name: str, *, tracking_uri: str) -> str | None:
    """The version ``champion`` points at, or None (no model, or no champion yet)."""
    found = _champion(tracking_client(tracking_uri), name)
    return None if found is None else str(found.version)


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
    criteria: list[Criterion] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "NOT PROMOTED"
        return f"{verdict}: {self.name} version {self.version} (run {self.run_id}): {self.reason}"

    def table(self) -> str:
        """Champion against challenger, one criterion a line (what the gate looked at, and why)."""
        if not self.criteria:
            return ""
        head = [
            "criterion",
            "rule",
            f"champion v{self.champion_version or '-'}",
            f"challenger v{self.version}",
            "",
        ]
        rows = [[c.name, c.rule, c.champion, c.challenger, c.verdict] for c in self.criteria]
        return text_table([head, *rows])


@dataclass
class Criterion:
    """One line of the gate's verdict; ``verdict`` is ``pass``, ``FAIL`` or empty (shown, not judged)."""

    name: str
    rule: str
    champion: str
    challenger: str
    verdict: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


def candidate_run(client: Any, run_id: str) -> Any:
    """The configuration run ``run_id`` stands for: itself, or for a sweep its best candidate (the
    one a closed-loop assessment put first, else the best by the selection metric)."""
    run = get_run(client, run_id)
    tags = run.data.tags
    if tags.get(TAG_KIND) == "sweep":
        best = tags.get(TAG_BEST_CLOSED_LOOP) or tags.get(TAG_BEST_RUN)
        if not best:
            raise TrackingError(f"sweep run {run_id} has no best child", hint="rerun the experiment")
        run = get_run(client, best)
    if not run.data.tags.get(TAG_MODEL_URI) or not run.data.tags.get(TAG_METRIC):
        raise TrackingError(
            f"run {run.info.run_id} has no selfheal model (tags {TAG_MODEL_URI}, {TAG_METRIC} missing)",
            hint="promote a configuration run logged by `selfheal experiment run`",
        )
    return run


def selection_value(run: Any) -> float | None:
    """The run's value of its sweep's selection metric (tag ``selfheal.metric``), None if not finite."""
    return _finite(run.data.metrics.get(run.data.tags.get(TAG_METRIC, "")))


def top_candidates(client: Any, ref: str, *, top: int) -> tuple[list[Any], Any | None]:
    """(the best ``top`` configuration runs of sweep ``ref`` by its selection metric, the sweep run);
    a configuration run id stands for itself (sweep None)."""
    run = get_run(client, ref)
    if run.data.tags.get(TAG_KIND) != "sweep":
        return [candidate_run(client, ref)], None
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{ref}' and tags.`{TAG_KIND}` = 'config'",
        max_results=1000,
    )
    higher = run.data.tags.get(TAG_HIGHER, "true") == "true"
    usable = [r for r in children if TAG_MODEL_URI in r.data.tags]
    if not usable:
        raise TrackingError(f"sweep {ref} has no configuration with a model", hint="rerun the experiment")

    def key(r: Any) -> float:
        v = selection_value(r)
        return -math.inf if v is None else (v if higher else -v)

    return sorted(usable, key=key, reverse=True)[:top], run


def register_version(client: Any, name: str, run: Any) -> str:
    """The version of ``name`` holding ``run``'s model, registered on first use (idempotent)."""
    from mlflow.exceptions import MlflowException

    model_uri = run.data.tags[TAG_MODEL_URI]
    with contextlib.suppress(MlflowException):  # already there
        client.create_registered_model(name, description="selfheal anomaly detector (calibrated scores)")
    found = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
    if found:
        return str(max(int(v.version) for v in found))
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run.info.run_id,
        tags={TAG_METRIC: run.data.tags[TAG_METRIC]},
        model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None,
    )
    return str(version.version)


def promote(
    run_id: str,
    name: str,
    *,
    tracking_uri: str,
    force: bool = False,
    reason: str | None = None,
) -> PromotionResult:
    """Register the run's model under ``name`` and move ``champion`` to it if it wins the gate.

    A sweep's parent run id stands for its best candidate (``candidate_run``). Promoting the same
    run again reuses its version (idempotent). The version is registered even when it loses,
    tagged with the verdict; the verdict's table goes into the challenger's run (gate/).
    """
    if force and not (reason and reason.strip()):
        raise TrackingError("--force needs a reason", hint='add --reason "why the gate is overridden"')
    client = tracking_client(tracking_uri)
    run = candidate_run(client, run_id)
    tags = run.data.tags
    run_id = run.info.run_id
    metric = tags[TAG_METRIC]
    higher = tags.get(TAG_HIGHER, "true") == "true"
    value = _finite(run.data.metrics.get(metric))
    ver = register_version(client, name, run)

    champion = _champion(client, name)
    result = PromotionResult(name, ver, run_id, False, "", metric, value, forced=force)
    if champion is not None:
        result.champion_version = str(champion.version)
    if champion is not None and str(champion.version) == ver:
        result.reason = "already the champion"
        return result
    if champion is None:
        result.criteria = _criteria(run, None, metric, higher)
        failed = [c for c in result.criteria if c.failed]
        if failed:
            result.reason = "no champion yet, and a first champion must pass the floor: " + "; ".join(
                f"{c.name} {c.challenger} (rule: {c.rule})" for c in failed
            )
        elif _closed_loop(run) is None:
            result.promoted = True
            result.reason = (
                f"no champion yet; never assessed in a campaign, promoted on detection alone "
                f"(selfheal chaos assess {run_id} --n N --seed S judges its healing)"
            )
        else:
            result.promoted = True
            result.reason = "no champion yet; heals in its campaign with no victim or false action"
        if not result.promoted and force:
            result.promoted = True
            result.reason = f"forced over the gate ({result.reason}); reason: {reason}"
    else:
        champ_run = get_run(client, champion.run_id)
        result.champion_value = _finite(champ_run.data.metrics.get(metric))
        result.criteria = _criteria(run, champ_run, metric, higher)
        mismatch = _comparability(run, champ_run, metric)
        failed = [c for c in result.criteria if c.failed]
        if mismatch:
            result.reason = f"not comparable with champion v{champion.version}: {mismatch}"
        elif value is None:
            result.reason = f"challenger has no finite '{metric}'"
        elif failed:
            parts = [
                f"{metric} {_fmt(value)} does not beat champion v{champion.version} "
                f"({_fmt(result.champion_value)})"
                if c.name == metric
                else f"{c.name} {c.challenger} against the champion's {c.champion} (rule: {c.rule})"
                for c in failed
            ]
            result.reason = "; ".join(parts)
        else:
            result.promoted = True
            result.reason = (
                f"{metric} {_fmt(value)} beats champion v{champion.version} ({_fmt(result.champion_value)})"
            )
            if _closed_loop(run) is not None:
                result.reason += ", heals at least as many faults, no victim or false action"
        if not result.promoted and force:
            result.promoted = True
            result.reason = f"forced over the gate ({result.reason}); reason: {reason}"

    if result.promoted:
        client.set_registered_model_alias(name, CHAMPION, ver)
        history = [*_history(client, name), ver]
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        client.set_model_version_tag(name, ver, "selfheal.promoted_at", _now())
        client.set_model_version_tag(name, ver, "selfheal.gate", f"promoted: {result.reason}"[:4900])
        if force:
            client.set_model_version_tag(name, ver, "selfheal.forced", "true")
            client.set_model_version_tag(name, ver, "selfheal.force_reason", str(reason))
    else:
        client.set_model_version_tag(name, ver, "selfheal.gate", f"rejected: {result.reason}"[:4900])
    if result.criteria:
        verdict = f"{result.summary()}\n\n{result.table()}\n"
        client.set_model_version_tag(name, ver, "selfheal.gate_table", result.table()[:4900])
        client.log_text(run_id, verdict, f"gate/{name}-v{ver}-{_now().replace(':', '')}.txt")
    logger.info("%s", result.summary())
    return result


def _closed_loop(run: Any) -> dict[str, float] | None:
    """The ``closed_loop.*`` figures of a run (unprefixed), or None when it was never assessed."""
    if TAG_CL_SEED not in run.data.tags:
        return None
    return {k.removeprefix(CL): float(v) for k, v in run.data.metrics.items() if k.startswith(CL)}


def _campaign(run: Any) -> str:
    tags = run.data.tags
    return f"seed {tags.get(TAG_CL_SEED)}, n {tags.get(TAG_CL_N)}"


def _criteria(run: Any, champ_run: Any | None, metric: str, higher: bool) -> list[Criterion]:
    """Champion against challenger per criterion; with no champion, the challenger's figures alone."""
    mine, theirs = run.data.metrics, (champ_run.data.metrics if champ_run is not None else {})

    def cell(metrics: dict[str, float], key: str, fmt: str = "{:.3f}") -> str:
        v = _finite(metrics.get(key))
        return "-" if v is None else fmt.format(v)

    judged = champ_run is not None
    value, champ_value = _finite(mine.get(metric)), _finite(theirs.get(metric))
    beats = value is not None and (champ_value is None or _beats(value, champ_value, higher))
    out = [
        Criterion(
            metric,
            "higher wins" if higher else "lower wins",
            cell(theirs, metric),
            cell(mine, metric),
            ("pass" if beats else "FAIL") if judged else "",
        )
    ]
    for key, (label, relative, absolute) in DETECTION_LIMITS.items():
        if key == metric or (key not in mine and key not in theirs):
            continue
        ours, champ = _finite(mine.get(key)), _finite(theirs.get(key))
        verdict = ""
        if judged and champ is not None:  # none measured (nothing detected) is worse than any
            limit = champ + max(relative * champ, absolute)
            verdict = "pass" if ours is not None and ours <= limit else "FAIL"
        rule = "at most champion's" + (f" +{relative:.0%} (or +{absolute:g})" if relative or absolute else "")
        rule = rule if judged else "shown"
        out.append(Criterion(label, rule, cell(theirs, key, "{:.1f}"), cell(mine, key, "{:.1f}"), verdict))
    cl, champ_cl = _closed_loop(run), (_closed_loop(champ_run) if champ_run is not None else None)
    if cl is None and champ_cl is None:
        return out
    mine_cl, theirs_cl = cl or {}, champ_cl or {}
    out.append(
        Criterion(
            "campaign",
            "the same",
            _campaign(champ_run) if champ_cl is not None else "-",
            _campaign(run) if cl is not None else "-",
        )
    )
    out.append(
        Criterion(
            "policies (rules/)",
            "the same",
            champ_run.data.tags.get(TAG_CL_POLICY, "-") if champ_cl is not None else "-",
            run.data.tags.get(TAG_CL_POLICY, "-") if cl is not None else "-",
        )
    )
    healed = mine_cl.get("faults_healed")
    if champ_cl is not None:  # as many as the champion healed in the same campaign
        rule, least = "at least the champion's", theirs_cl.get("faults_healed", 0.0)
    else:  # the floor: a first champion (or one never assessed) is no yardstick
        rule, least = "at least one", 1.0
    verdict = "" if cl is None else ("pass" if healed is not None and healed >= least else "FAIL")

    def of(figures: dict[str, float]) -> str:
        if "faults" not in figures:
            return "-"
        return f"{figures.get('faults_healed', 0):.0f}/{figures['faults']:.0f}"

    out.append(Criterion("faults healed", rule, of(theirs_cl), of(mine_cl), verdict))
    for key, label in CL_MUST_BE_ZERO.items():
        mine_v = mine_cl.get(key)
        verdict = "" if cl is None else ("pass" if mine_v == 0 else "FAIL")
        out.append(
            Criterion(label, "none", cell(theirs_cl, key, "{:.0f}"), cell(mine_cl, key, "{:.0f}"), verdict)
        )
    for key, label in (
        ("detect_rate", "faults detected"),
        ("wrong_root_actions", "wrong remedies on a root"),
    ):
        out.append(Criterion(label, "shown", cell(theirs_cl, key, "{:.2f}"), cell(mine_cl, key, "{:.2f}")))
    return out


def _comparability(run: Any, champ_run: Any, metric: str) -> str:
    """Empty when the two runs were judged on the same evaluation and campaign, else what differs."""
    challenger, champion = run.data.tags, champ_run.data.tags
    diffs = []
    for tag, what in ((TAG_FINGERPRINT, "data fingerprint"), (TAG_EVAL_KEY, "evaluation key")):
        if challenger.get(tag) != champion.get(tag):
            diffs.append(f"{what} {challenger.get(tag)} != {champion.get(tag)}")
    if champion.get(TAG_METRIC) != metric:
        diffs.append(f"metric {metric} != {champion.get(TAG_METRIC)}")
    if TAG_CL_SEED in champion:
        if TAG_CL_SEED not in challenger:
            diffs.append(
                f"the champion was assessed in a campaign ({_campaign(champ_run)}), the challenger never "
                f"(selfheal chaos assess {run.info.run_id} --seed {champion[TAG_CL_SEED]} "
                f"--n {champion.get(TAG_CL_N)})"
            )
        elif _campaign(run) != _campaign(champ_run):
            diffs.append(f"campaign {_campaign(run)} != {_campaign(champ_run)} (assess both on the same)")
        elif challenger.get(TAG_CL_POLICY) != champion.get(TAG_CL_POLICY):
            ours, theirs = (tags.get(TAG_CL_POLICY) or "unknown" for tags in (challenger, champion))
            diffs.append(
                f"closed-loop figures under other policies (rules/ {ours} != the champion's {theirs}): "
                f"assess both under today's rules in one command "
                f"(selfheal chaos assess {champ_run.info.run_id} {run.info.run_id} "
                f"--seed {champion[TAG_CL_SEED]} --n {champion.get(TAG_CL_N)})"
            )
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

    client = tracking_client(tracking_uri)
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
    client = tracking_client(tracking_uri)
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
    client = tracking_client(tracking_uri)
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
