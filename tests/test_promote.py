"""Promotion: the champion/challenger gate on alias `champion`, --force with a reason, list, rollback.

The gate judges detection and healing: its closed-loop rules run on real MLflow runs (SQLite) whose
closed-loop figures are logged as ``selfheal chaos assess`` logs them; the end-to-end test
runs real campaigns against two real candidate bundles, a detector that alarms (and heals) and one
that never alarms, whose detection metric is the better one.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from test_tracking_support import fitted_detector
from typer.testing import CliRunner

from engine import cli
from engine.detectors.stream import StreamDetector
from engine.errors import TrackingError
from engine.home import Home
from engine.tracking import registry
from engine.tracking.model import log_detector

NAME = ""
CAMPAIGN = {"seed": "5", "n": "4"}


@pytest.fixture(autouse=True)
def _name(request: pytest.FixtureRequest) -> None:
    global NAME
    NAME = request.node.name.removeprefix("test_")[:60]


@pytest.fixture(scope="module")
def pipeline() -> StreamDetector:
    return fitted_detector(n=200)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow database for the module (creating one runs migrations: seconds); a model name per test."""
    home = Home.resolve(tmp_path_factory.mktemp("promote") / "home")
    uri = registry.resolve_tracking_uri(home)
    registry.ensure_experiment("gate", tracking_uri=uri, home=home)
    return uri


def _run(
    uri: str,
    pipeline: StreamDetector,
    f1: float,
    fingerprint: str = "fp1",
    metric: str = "f1",
    *,
    healed: float | None = None,
    victim: float = 0.0,
    false: float = 0.0,
    campaign: dict[str, str] = CAMPAIGN,
    parent: str | None = None,
    delay: float = 600.0,
    alarms: float = 1.0,
    policy: str = "p1",
    said_no: float | None = None,
) -> str:
    """A configuration run as the sweep logs it; with ``healed``, closed-loop figures as assess logs them."""
    registry.use_tracking(uri)
    exp = mlflow.get_experiment_by_name("gate")
    tags = {"mlflow.parentRunId": parent} if parent else {}
    with mlflow.start_run(experiment_id=exp.experiment_id, tags=tags) as run:
        model_uri = log_detector(pipeline)
        mlflow.log_metrics({"f1": f1, "mean_delay_s": delay, "false_alarms_per_day": alarms})
        if said_no is not None:
            mlflow.log_metric("operator_false_alarms", said_no)
        mlflow.set_tags(
            {
                registry.TAG_KIND: "config",
                registry.TAG_MODEL_URI: model_uri,
                registry.TAG_METRIC: metric,
                registry.TAG_HIGHER: "true",
                registry.TAG_FINGERPRINT: fingerprint,
                registry.TAG_EVAL_KEY: "key1",
            }
        )
        if healed is not None:
            mlflow.set_tags(
                {
                    registry.TAG_CL_SEED: campaign["seed"],
                    registry.TAG_CL_N: campaign["n"],
                    registry.TAG_CL_POLICY: policy,
                }
            )
            figures = {
                "faults": 4.0,
                "faults_healed": healed,
                "heal_rate": healed / 4,
                "victim_actions": victim,
                "control_actions": false,
                "unapproved_high_risk_actions": 0.0,
            }
            mlflow.log_metrics({registry.CL + k: v for k, v in figures.items()})
    return run.info.run_id


def _champion(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias(NAME, "champion").version)


def test_gate_moves_champion_only_for_a_better_comparable_challenger(
    uri: str, pipeline: StreamDetector
) -> None:
    first = registry.promote(_run(uri, pipeline, 0.5), NAME, tracking_uri=uri)
    assert first.promoted and first.reason.startswith("no champion yet; never assessed in a campaign")
    assert _champion(uri) == first.version

    worse = registry.promote(_run(uri, pipeline, 0.4), NAME, tracking_uri=uri)
    assert not worse.promoted and "does not beat" in worse.reason
    assert _champion(uri) == first.version
    tags = MlflowClient(uri).get_model_version(NAME, worse.version).tags
    assert tags["selfheal.gate"].startswith("rejected")

    other_data = registry.promote(_run(uri, pipeline, 0.9, fingerprint="fp2"), NAME, tracking_uri=uri)
    assert (
        not other_data.promoted
        and "not comparable" in other_data.reason
        and "fingerprint" in other_data.reason
    )
    assert _champion(uri) == first.version

    better_id = _run(uri, pipeline, 0.7)
    better = registry.promote(better_id, NAME, tracking_uri=uri)
    assert better.promoted and better.champion_value == 0.5 and _champion(uri) == better.version
    again = registry.promote(better_id, NAME, tracking_uri=uri)  # idempotent: same version, no new one
    assert again.version == better.version and again.reason == "already the champion"


def test_detection_delay_and_false_alarms_decide_beside_the_metric(
    uri: str, pipeline: StreamDetector
) -> None:
    """A better F1 bought with later alarms or more of them loses; within the tolerance it wins.
    Champion: delay 600 s, 1 false alarm a day; limits 600 + max(25 %, 300 s) = 900 s and
    1 + max(25 %, 1) = 2 a day."""
    first = registry.promote(_run(uri, pipeline, 0.5), NAME, tracking_uri=uri)
    late = registry.promote(_run(uri, pipeline, 0.9, delay=901.0), NAME, tracking_uri=uri)
    assert not late.promoted and [c.name for c in late.criteria if c.failed] == ["detection delay (s)"]
    assert "detection delay (s) 901.0 against the champion's 600.0" in late.reason
    noisy = registry.promote(_run(uri, pipeline, 0.9, alarms=2.5), NAME, tracking_uri=uri)
    assert not noisy.promoted and [c.name for c in noisy.criteria if c.failed] == ["false alarms/day"]
    assert registry.champion_version(NAME, tracking_uri=uri) == first.version
    fair = registry.promote(_run(uri, pipeline, 0.9, delay=899.0, alarms=2.0), NAME, tracking_uri=uri)
    assert fair.promoted, fair.reason
    rows = {c.name: c for c in fair.criteria}
    assert rows["detection delay (s)"].rule == "at most champion's +25% (or +300)"
    assert rows["false alarms/day"].verdict == "pass"
    assert "alarms operators said no to" not in rows  # neither was judged with operators' labels


def test_alarms_operators_said_no_to_decide(uri: str, pipeline: StreamDetector) -> None:
    """With operators' negative labels in the data, a challenger firing in more of their windows
    than the champion loses, whatever its F1."""
    first = registry.promote(_run(uri, pipeline, 0.5, said_no=1.0), NAME, tracking_uri=uri)
    more = registry.promote(_run(uri, pipeline, 0.9, said_no=2.0), NAME, tracking_uri=uri)
    said = "alarms operators said no to"
    assert not more.promoted and [c.name for c in more.criteria if c.failed] == [said]
    assert registry.champion_version(NAME, tracking_uri=uri) == first.version
    fewer = registry.promote(_run(uri, pipeline, 0.9, said_no=1.0), NAME, tracking_uri=uri)
    assert fewer.promoted and {c.name: c for c in fewer.criteria}[said].verdict == "pass"


def test_force_needs_a_reason_and_is_recorded(uri: str, pipeline: StreamDetector) -> None:
    registry.promote(_run(uri, pipeline, 0.8), NAME, tracking_uri=uri)
    weak = _run(uri, pipeline, 0.1)
    with pytest.raises(TrackingError, match="reason"):
        registry.promote(weak, NAME, tracking_uri=uri, force=True)
    forced = registry.promote(weak, NAME, tracking_uri=uri, force=True, reason="hotfix for incident 42")
    assert forced.promoted and forced.forced and _champion(uri) == forced.version
    tags = MlflowClient(uri).get_model_version(NAME, forced.version).tags
    assert tags["selfheal.forced"] == "true" and tags["selfheal.force_reason"] == "hotfix for incident 42"


def test_rollback_walks_back_through_the_champion_history(uri: str, pipeline: StreamDetector) -> None:
    v1 = registry.promote(_run(uri, pipeline, 0.5), NAME, tracking_uri=uri).version
    v2 = registry.promote(_run(uri, pipeline, 0.6), NAME, tracking_uri=uri).version
    v3 = registry.promote(_run(uri, pipeline, 0.7), NAME, tracking_uri=uri).version
    assert registry.rollback(NAME, tracking_uri=uri).to_version == v2
    assert _champion(uri) == v2
    assert registry.rollback(NAME, tracking_uri=uri).to_version == v1
    with pytest.raises(TrackingError, match="no previous champion"):
        registry.rollback(NAME, tracking_uri=uri)
    rows = registry.list_versions(NAME, tracking_uri=uri)
    assert [r.version for r in rows] == [v1, v2, v3]
    assert rows[0].aliases == ["champion"] and rows[2].aliases == []
    assert rows[1].metrics["f1"] == 0.6
    assert "selfheal.rolled_back_at" in rows[2].tags


def test_sweep_run_id_stands_for_its_best_child(uri: str, pipeline: StreamDetector) -> None:
    child = _run(uri, pipeline, 0.6)
    registry.use_tracking(uri)
    exp = mlflow.get_experiment_by_name("gate")
    with mlflow.start_run(experiment_id=exp.experiment_id) as parent:
        mlflow.set_tags({registry.TAG_KIND: "sweep", registry.TAG_BEST_RUN: child})
    result = registry.promote(parent.info.run_id, NAME, tracking_uri=uri)
    assert result.run_id == child and result.promoted


def test_home_decides_when_no_uri_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = Home.resolve(tmp_path / "a"), Home.resolve(tmp_path / "b")
    registry.use_tracking(registry.resolve_tracking_uri(a))
    assert registry.resolve_tracking_uri(b) == b.tracking_uri  # MLflow's env export does not leak
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert registry.resolve_tracking_uri(b) == "http://127.0.0.1:5999"
    assert registry.resolve_tracking_uri(b, "sqlite:///x.db") == "sqlite:///x.db"


def test_unknown_run_is_a_clear_error(uri: str) -> None:
    with pytest.raises(TrackingError, match="not found"):
        registry.promote("0" * 32, NAME, tracking_uri=uri)


def test_cli_exit_codes_and_listing(
    uri: str, pipeline: StreamDetector, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = _run(uri, pipeline, 0.6), _run(uri, pipeline, 0.2)

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as info:
            cli.main([*args, "--tracking-uri", uri])
        return int(info.value.code or 0)

    assert run("promote", good, "--name", NAME) == 0
    assert run("promote", bad, "--name", NAME) == 1
    assert "NOT PROMOTED" in capsys.readouterr().out
    assert run("promote", bad, "--name", NAME, "--force") == 2  # no reason: our error, exit 2
    assert "--force needs a reason" in capsys.readouterr().err
    assert run("promote", bad, "--name", NAME, "--force", "--reason", "drill") == 0
    assert run("models", "list", NAME) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "forced: drill" in out
    assert run("models", "rollback", NAME) == 0
    assert "moved back from version 2 to 1" in capsys.readouterr().out


# ------------------------------------------------------------------ the closed loop in the gate
def test_a_better_f1_that_heals_fewer_faults_loses_and_the_healer_wins(
    uri: str, pipeline: StreamDetector
) -> None:
    champion = registry.promote(_run(uri, pipeline, 0.5, healed=2), NAME, tracking_uri=uri)
    assert champion.promoted

    sharp = registry.promote(_run(uri, pipeline, 0.9, healed=1), NAME, tracking_uri=uri)
    assert not sharp.promoted and _champion(uri) == champion.version
    assert "faults healed 1/4 against the champion's 2/4" in sharp.reason
    rows = {c.name: c for c in sharp.criteria}
    assert rows["f1"].verdict == "pass" and rows["faults healed"].verdict == "FAIL"

    healer = registry.promote(_run(uri, pipeline, 0.7, healed=3), NAME, tracking_uri=uri)
    assert healer.promoted and _champion(uri) == healer.version
    assert "heals at least as many faults" in healer.reason
    # the verdict explains itself beside the model: a table tag on the version, a text in the run
    client = MlflowClient(uri)
    table = client.get_model_version(NAME, healer.version).tags["selfheal.gate_table"]
    assert "faults healed" in table and "3/4" in table and "2/4" in table
    texts = [a.path for a in client.list_artifacts(healer.run_id, "gate")]
    assert len(texts) == 1 and texts[0].startswith(f"gate/{NAME}-v{healer.version}")


def test_a_challenger_acting_on_a_victim_or_in_a_quiet_control_is_refused_whatever_its_f1(
    uri: str, pipeline: StreamDetector
) -> None:
    first = registry.promote(_run(uri, pipeline, 0.5, healed=2), NAME, tracking_uri=uri)
    victim = registry.promote(_run(uri, pipeline, 0.99, healed=4, victim=1), NAME, tracking_uri=uri)
    assert not victim.promoted and _champion(uri) == first.version
    assert "actions on victims 1 against the champion's 0" in victim.reason
    assert [c.name for c in victim.criteria if c.failed] == ["actions on victims"]

    false = registry.promote(_run(uri, pipeline, 0.99, healed=4, false=2), NAME, tracking_uri=uri)
    assert not false.promoted and [c.name for c in false.criteria if c.failed] == [
        "false actions (quiet controls)"
    ]
    assert _champion(uri) == first.version


@pytest.mark.parametrize(
    ("figures", "failed"),
    [
        ({"healed": 0.0}, ["faults healed"]),
        ({"healed": 3.0, "victim": 1.0}, ["actions on victims"]),
        ({"healed": 3.0, "false": 1.0}, ["false actions (quiet controls)"]),
    ],
)
def test_a_first_champion_must_pass_the_floor(
    uri: str, pipeline: StreamDetector, figures: dict[str, float], failed: list[str]
) -> None:
    """No champion to beat is no free pass: an assessed first candidate that heals nothing or acts
    on a victim or in a quiet control is refused; one that heals cleanly is promoted."""
    global NAME
    NAME = f"{NAME[:40]}-{len(failed[0])}-{figures['healed']:.0f}"
    refused = registry.promote(_run(uri, pipeline, 0.9, **figures), NAME, tracking_uri=uri)
    assert not refused.promoted and refused.reason.startswith("no champion yet, and a first champion must")
    assert [c.name for c in refused.criteria if c.failed] == failed
    assert registry.champion_version(NAME, tracking_uri=uri) is None
    healer = registry.promote(_run(uri, pipeline, 0.5, healed=1), NAME, tracking_uri=uri)
    assert healer.promoted and "heals in its campaign" in healer.reason
    assert registry.champion_version(NAME, tracking_uri=uri) == healer.version
    rows = {c.name: c for c in healer.criteria}
    assert rows["faults healed"].rule == "at least one" and rows["faults healed"].verdict == "pass"


def test_without_the_champions_campaign_a_challenger_is_not_comparable(
    uri: str, pipeline: StreamDetector
) -> None:
    first = registry.promote(_run(uri, pipeline, 0.5, healed=2), NAME, tracking_uri=uri)
    unassessed = _run(uri, pipeline, 0.9)
    result = registry.promote(unassessed, NAME, tracking_uri=uri)
    assert not result.promoted and "not comparable" in result.reason
    assert f"selfheal chaos assess {unassessed} --seed 5 --n 4" in result.reason
    other = registry.promote(
        _run(uri, pipeline, 0.9, healed=4, campaign={"seed": "6", "n": "4"}), NAME, tracking_uri=uri
    )
    assert not other.promoted and "campaign seed 6, n 4 != seed 5, n 4" in other.reason
    assert _champion(uri) == first.version


def test_figures_under_other_policies_are_not_comparable(uri: str, pipeline: StreamDetector) -> None:
    """Healing is the detector's and the policies': after a rules/ change the champion's figures say
    nothing about today's rules, so a challenger assessed under them is told to assess both again."""
    first = registry.promote(_run(uri, pipeline, 0.5, healed=2, policy="old-rules"), NAME, tracking_uri=uri)
    challenger = _run(uri, pipeline, 0.9, healed=4, policy="new-rules")
    result = registry.promote(challenger, NAME, tracking_uri=uri)
    assert not result.promoted and registry.champion_version(NAME, tracking_uri=uri) == first.version
    assert "other policies (rules/ new-rules != the champion's old-rules)" in result.reason
    assert f"selfheal chaos assess {first.run_id} {challenger} --seed 5 --n 4" in result.reason
    rows = {c.name: c for c in result.criteria}
    assert (rows["policies (rules/)"].champion, rows["policies (rules/)"].challenger) == (
        "old-rules",
        "new-rules",
    )


def test_promote_prints_the_verdict_table(uri: str, pipeline: StreamDetector, tmp_path: Path) -> None:
    registry.promote(_run(uri, pipeline, 0.5, healed=2), NAME, tracking_uri=uri)
    run_id = _run(uri, pipeline, 0.9, healed=1)
    out = CliRunner().invoke(
        cli.app, ["--home", str(tmp_path), "promote", run_id, "--name", NAME, "--tracking-uri", uri]
    )
    assert out.exit_code == 1, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("NOT PROMOTED") and "champion v1" in lines[1] and "challenger v2" in lines[1]
    healed = next(line for line in lines if line.startswith("faults healed"))
    assert healed.split()[-3:] == ["2/4", "1/4", "FAIL"]


def _deaf(pipeline: StreamDetector) -> StreamDetector:
    """The same detector with a threshold no calibrated score reaches and no sustained alarm (which
    flags runs of scores under the threshold): it never alarms, never heals."""
    deaf = copy.deepcopy(pipeline)
    deaf.threshold_ = 2.0
    threshold = deaf.config.threshold.model_copy(update={"sustained": None})
    deaf.config = deaf.config.model_copy(update={"threshold": threshold})
    deaf.sustained_threshold_ = math.inf
    return deaf


@pytest.mark.slow
@pytest.mark.alone
def test_assess_runs_one_campaign_per_candidate_and_promote_puts_the_healer_forward(tmp_path: Path) -> None:
    from engine.chaos.api import default_detector

    home = Home.resolve(tmp_path / "home")
    uri = registry.resolve_tracking_uri(home)
    registry.ensure_experiment("gate", tracking_uri=uri, home=home)
    healer = default_detector()
    registry.use_tracking(uri)
    exp = mlflow.get_experiment_by_name("gate")
    with mlflow.start_run(experiment_id=exp.experiment_id) as sweep:
        mlflow.set_tags({registry.TAG_KIND: "sweep", registry.TAG_METRIC: "f1", registry.TAG_HIGHER: "true"})
    sweep_id = sweep.info.run_id
    good = _run(uri, healer, 0.5, parent=sweep_id)
    deaf = _run(uri, _deaf(healer), 0.9, parent=sweep_id)
    MlflowClient(uri).set_tag(sweep_id, registry.TAG_BEST_RUN, deaf)  # the sweep's best by F1

    # seed 21 starts with a dependency outage, the fault the default detector heals most reliably
    args = [
        "--home",
        str(home.root),
        "chaos",
        "assess",
        sweep_id,
        "--top",
        "2",
        "--n",
        "2",
        "--seed",
        "21",
    ]
    out = CliRunner().invoke(cli.app, [*args, "--name", NAME, "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.count("[1/2] 000-") + out.output.count("[2/2] 000-") == 2  # one progress line each
    client = MlflowClient(uri)
    figures = {r: client.get_run(r).data.metrics for r in (good, deaf)}
    assert figures[deaf][registry.CL + "faults_healed"] == 0.0
    assert figures[deaf][registry.CL + "faults"] == figures[good][registry.CL + "faults"] == 2.0
    assert figures[good][registry.CL + "faults_healed"] >= 1.0
    assert client.get_run(good).data.tags[registry.TAG_CL_SEED] == "21"
    assert client.get_run(sweep_id).data.tags[registry.TAG_BEST_CLOSED_LOOP] == good
    ranked = [line for line in out.output.splitlines() if line[:2] in ("1 ", "2 ")]
    assert good[:8] in ranked[0] and deaf[:8] in ranked[1]
    assert (home.bundles / "candidates").is_dir()

    promote = ["--home", str(home.root), "promote", sweep_id, "--name", NAME]
    first = CliRunner().invoke(cli.app, promote)
    assert first.exit_code == 0 and f"(run {good})" in first.output, first.output
    second = CliRunner().invoke(cli.app, ["--home", str(home.root), "promote", deaf, "--name", NAME])
    assert second.exit_code == 1 and "faults healed 0/2" in second.output, second.output
    assert client.get_model_version_by_alias(NAME, "champion").run_id == good
