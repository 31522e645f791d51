"""Chaos campaigns: the draw (reproducible from its seed), expectations derived from the policies,
the generated files (validated like hand-written ones), the figures and report, and a small
campaign against the real engine (marked ``alone``: it races a 720x clock).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_chromium, rendered_dom
from typer.testing import CliRunner

from engine.chaos.api import RULES_DIR
from engine.chaos.campaign import (
    APPROVE_AFTER_S,
    DETECT_S,
    REFERENCE_WEEK,
    SCALE_RANGE,
    Remedy,
    deadline_s,
    eligibility,
    generate_campaign,
    remedies,
    scale_params,
    write_campaign,
)
from engine.chaos.campaign_report import CampaignResult, render_html, render_text, write_campaign_report
from engine.chaos.experiment import load_experiment
from engine.errors import InputError, SpecError
from engine.policy.loader import load_policies
from engine.simulation.config import load_config

ALONE_SEED = 24  # its first 8: a quiet control, pairs, single and paired outages, every kind
SEED = 5


@pytest.fixture(scope="module")
def policies() -> Any:
    return load_policies(RULES_DIR)


def _same(a: Any, b: Any) -> bool:
    return [(g.draw, g.experiment) for g in a.items] == [(g.draw, g.experiment) for g in b.items]


def test_the_same_seed_draws_the_same_experiments_and_a_longer_campaign_extends_it(policies: Any) -> None:
    first = generate_campaign(8, SEED, policies=policies)
    assert _same(first, generate_campaign(8, SEED, policies=policies))
    longer = generate_campaign(12, SEED, policies=policies)
    assert [(g.draw, g.experiment) for g in longer.items[:8]] == [(g.draw, g.experiment) for g in first.items]
    other = generate_campaign(8, SEED + 1, policies=policies)
    assert [g.draw.label for g in other.items] != [g.draw.label for g in first.items]


def test_remedies_and_eligible_services_come_from_the_policies(policies: Any) -> None:
    table = remedies(policies)
    deploy = table[("bad_deploy", "inference-a")]
    assert deploy.actions == ("rollback_model",) and deploy.approval_actions == ("rollback_model",)
    assert deploy.approver == "ml-oncall"
    assert set(table[("latency_creep", "inference-b")].actions) == {"scale", "restart"}
    assert table[("stale_index", "vector-db")].actions == ("refresh_index",)
    assert table[("stale_index", "vector-db")].maintenance  # the weekly re-index window
    eligible, uncovered = eligibility(load_config(), table)
    assert eligible["memory_leak"] == ["feature-store", "inference-a", "inference-b"]
    assert eligible["dependency_outage"] == ["vector-db", "feature-store"]
    assert ("memory_leak", "gateway") in uncovered and ("latency_creep", "vector-db") in uncovered
    # the gateway calls nobody's outage and the platform has no creep on it: neither drawn nor missed
    assert ("dependency_outage", "gateway") not in uncovered and ("latency_creep", "gateway") not in uncovered


def test_a_policy_change_changes_what_the_campaign_draws(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    leak = rules / "memory_leak.yaml"
    leak.write_text(
        leak.read_text().replace("services: [inference-*, feature-store]", "services: [feature-store]")
    )
    (rules / "stale_index.yaml").unlink()
    campaign = generate_campaign(40, SEED, policies=load_policies(rules))
    assert campaign.eligible["memory_leak"] == ["feature-store"] and "stale_index" not in campaign.eligible
    assert ("memory_leak", "inference-a") in campaign.uncovered and (
        "stale_index",
        "vector-db",
    ) in campaign.uncovered
    drawn = {(f.kind, f.service) for g in campaign.items for f in g.draw.faults}
    assert ("memory_leak", "inference-a") not in drawn and not any(k == "stale_index" for k, _ in drawn)


def test_every_generated_experiment_expects_the_remedy_on_the_root_only(policies: Any) -> None:
    campaign = generate_campaign(60, SEED, policies=policies)
    controls = pairs = 0
    for g in campaign.items:
        exp, draw = g.experiment, g.draw
        assert not exp.allow_unexpected_actions
        assert REFERENCE_WEEK <= draw.start < datetime(2026, 1, 19) and draw.start.minute % 10 == 0
        if draw.control:
            controls += 1
            assert exp.control and exp.faults == [] and exp.expect == [] and exp.approvals == []
            continue
        pairs += len(draw.faults) == 2
        assert len({f.service for f in exp.faults}) == len(exp.faults)  # two faults, two roots
        for fault, e in zip(exp.faults, exp.expect, strict=True):
            assert e.fault == fault.name and e.service == fault.service
            remedy = campaign.remedies[(fault.kind, fault.service)]
            assert set(e.actions) == set(remedy.actions)
            assert e.verified and e.executed
            assert e.approval == ("approved" if fault.kind == "bad_deploy" else "none")
        assert {(a.action, a.service, a.approver) for a in exp.approvals} == {
            ("rollback_model", f.service, "ml-oncall") for f in exp.faults if f.kind == "bad_deploy"
        }
        for drawn in draw.faults:
            assert SCALE_RANGE[0] <= drawn.scale <= SCALE_RANGE[1]
            assert drawn.params.get("magnitude", 1.0) <= (1.0 if drawn.kind != "latency_creep" else 10.0)
    assert controls >= 3 and pairs >= 10
    assert {f.kind for g in campaign.items for f in g.draw.faults} == set(campaign.eligible)


def test_strength_scales_what_makes_each_kind_strong_capped_where_its_physics_ends() -> None:
    creep = scale_params("latency_creep", {"magnitude": 1.3, "ramp_s": 900.0}, 2.0)
    assert creep == {"magnitude": 1.6, "ramp_s": 900.0}  # the slowdown beyond normal doubles
    assert scale_params("memory_leak", {"magnitude": 1.0, "ramp_s": 1200.0}, 4.0)["ramp_s"] == 300.0
    assert scale_params("bad_deploy", {"magnitude": 0.12}, 5.0)["magnitude"] == 0.6
    assert scale_params("dependency_outage", {"magnitude": 0.8}, 5.0)["magnitude"] == 1.0


def test_deadlines_follow_the_fault_and_the_policy() -> None:
    plain = Remedy("memory_leak", "inference-a", ("restart",), (), "x", 600.0)
    assert deadline_s(plain, "memory_leak", {"ramp_s": 700.0}, 0.0) == 700.0  # before the OOM kill
    deploy = Remedy("bad_deploy", "inference-a", ("rollback_model",), ("rollback_model",), "x", 900.0)
    assert deadline_s(deploy, "bad_deploy", {"magnitude": 0.1}, 0.0) == 60.0 + DETECT_S + APPROVE_AFTER_S
    stale = remedies(load_policies(RULES_DIR))[("stale_index", "vector-db")]
    base = 900.0 + DETECT_S
    monday = datetime(2026, 1, 12, 1, 50, tzinfo=UTC).timestamp()
    assert deadline_s(stale, "stale_index", {"ramp_s": 900.0}, monday) == base
    sunday = datetime(
        2026, 1, 18, 1, 50, tzinfo=UTC
    ).timestamp()  # 10 minutes before Sunday's 02:00-04:00 re-index
    assert deadline_s(stale, "stale_index", {"ramp_s": 900.0}, sunday) == base + 2 * 3600


def test_generated_files_read_back_equal_and_validate_like_hand_written_ones(
    tmp_path: Path, policies: Any
) -> None:
    campaign = generate_campaign(6, SEED, policies=policies)
    paths = write_campaign(campaign, tmp_path)
    assert [load_experiment(p) for p in paths] == [g.experiment for g in campaign.items]
    assert (tmp_path / "campaign.json").is_file()


def test_dry_run_writes_valid_experiments_that_chaos_validate_accepts(tmp_path: Path) -> None:
    from engine.cli import app

    runner = CliRunner()
    out = tmp_path / "dry"
    result = runner.invoke(
        app,
        [
            "--home",
            str(tmp_path / "home"),
            "chaos",
            "campaign",
            "--n",
            "5",
            "--seed",
            "3",
            "--dry-run",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    files = sorted((out / "experiments").glob("*.yaml"))
    assert len(files) == 5 and "5 experiments written and valid" in result.output
    ok = runner.invoke(app, ["chaos", "validate", str(out / "experiments")])
    assert ok.exit_code == 0 and ok.output.count("ok  ") == 5
    files[0].write_text(files[0].read_text().replace("service: gateway", "servce: gateway", 1))
    bad = runner.invoke(app, ["chaos", "validate", str(out / "experiments")])
    assert isinstance(bad.exception, SpecError)  # engine.cli.main turns it into exit code 2
    (problem,) = bad.exception.problems
    assert problem.file.endswith(files[0].name) and "servce" in problem.message
    assert "Example:" in runner.invoke(app, ["chaos", "campaign", "--help"]).output


def test_a_quiet_control_injects_nothing_and_a_fault_experiment_must_inject(tmp_path: Path) -> None:
    probe = "{name: e, service: gateway, metric: error_rate, tolerance: {max: 0.03}}"
    control = tmp_path / "control.yaml"
    control.write_text(
        "title: t\ncontrol: true\nsteady_state_hypothesis: {title: h, probes: [" + probe + "]}\n"
        "method:\n  - fault: {name: f, kind: memory_leak, service: inference-a}\n  - pause: 5m\n"
    )
    with pytest.raises(SpecError) as exc:
        load_experiment(control)
    assert [p.path for p in exc.value.problems] == ["control"]
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(
        "title: t\nsteady_state_hypothesis: {title: h, probes: [" + probe + "]}\nmethod: [{pause: 5m}]\n"
    )
    with pytest.raises(SpecError) as exc:
        load_experiment(quiet)
    assert "control: true" in str(exc.value)
    quiet.write_text(quiet.read_text() + "control: true\n")
    assert load_experiment(quiet).control


# ------------------------------------------------------------------------------------ figures
def _fault(kind: str, service: str, scale: float, healed: bool, ttd: float | None = 60.0) -> dict[str, Any]:
    return {
        "name": "f1",
        "kind": kind,
        "service": service,
        "scale": scale,
        "detected": ttd is not None,
        "remedied": healed,
        "healed": healed,
        "ttd_s": ttd,
        "ttr_s": 300.0 if healed else None,
        "why": "" if healed else "no restart on vector-db was executed",
        "expected": "restart",
        "within_s": 1230.0,
    }


def _action(
    role: str, action: str = "restart", risk: str = "medium", approved: bool = False
) -> dict[str, Any]:
    return {
        "action": action,
        "target": "gateway",
        "rule": "dependency-outage/restart-root-cause",
        "risk": risk,
        "verification": "verified",
        "approved": approved,
        "role": role,
        "fault": None,
    }


def _outcome(
    i: int, faults: list[dict[str, Any]], actions: list[dict[str, Any]], control: bool = False
) -> dict:
    return {
        "index": i,
        "name": f"{i:03d}-x",
        "label": "quiet control" if control else "x",
        "when": "Mon 09:00",
        "control": control,
        "pair": len(faults) == 2,
        "verdict": "passed" if all(f["healed"] for f in faults) and not actions else "failed",
        "reasons": [],
        "faults": faults,
        "actions": actions,
        "approvals": [
            {
                "action": "rollback_model",
                "target": "inference-a",
                "status": "approved",
                "approver": "ml-oncall",
                "expected": True,
            }
        ],
        "wall_s": 4.0 + i,
        "report": f"{i:03d}-x/report.html",
    }


def result() -> CampaignResult:
    return CampaignResult(
        seed=9,
        outcomes=[
            _outcome(0, [_fault("dependency_outage", "vector-db", 1.5, True)], [_action("remedy")]),
            _outcome(1, [_fault("dependency_outage", "vector-db", 3.0, False)], [_action("victim")]),
            _outcome(
                2,
                [
                    _fault("bad_deploy", "inference-a", 0.7, True),
                    _fault("memory_leak", "inference-b", 2.5, False, None),
                ],
                [
                    _action("remedy", "rollback_model", "high", approved=True),
                    _action("wrong remedy on a root", "rollback_model", "high"),
                ],
            ),
            _outcome(3, [], [_action("control")], control=True),
        ],
        uncovered=[("memory_leak", "gateway")],
        detector="PCA",
        bundle_version="test",
        wall_s=30.0,
    )


def test_the_figures_count_heals_false_actions_and_unapproved_high_risk_ones() -> None:
    m = result().metrics()
    assert m["faults"] == 4 and m["faults_healed"] == 2 and m["heal_rate"] == 0.5
    assert m["heal_rate_kind_dependency_outage"] == 0.5 and m["heal_rate_kind_bad_deploy"] == 1.0
    assert m["heal_rate_strength_0_5_1x"] == 1.0 and m["heal_rate_strength_2_5x"] == 0.0
    assert m["heal_rate_concurrency_two_at_once"] == 0.5 and m["heal_rate_concurrency_alone"] == 0.5
    assert m["victim_actions"] == 1 and m["wrong_root_actions"] == 1 and m["control_actions"] == 1
    assert m["unapproved_high_risk_actions"] == 1  # the approved rollback does not count
    assert m["detect_rate"] == 0.75 and m["ttd_median_s_dependency_outage"] == 60.0
    assert m["wall_s_per_experiment_median"] == 5.5
    text = render_text(result())
    assert "healed 2/4 (50%)" in text and "actions on victims 1" in text
    table = [
        line for line in text.splitlines() if line.split()[0] in ("kind", "bad_deploy", "dependency_outage")
    ]
    assert len({line.index("TTD") if "TTD" in line else line.index("60 s") for line in table}) == 1, (
        "the per-kind table's columns line up whatever the widest cell"
    )


def test_the_campaign_page_is_self_contained() -> None:
    import re

    page = render_html(result())
    assert not re.search(r"""(src|href)=["']https?://""", page), "no CDN: the network is closed"
    for element_id in (
        "kinds-table",
        "ttd-plot",
        "ttr-plot",
        "unexpected-table",
        "approvals-table",
        "experiments-table",
    ):
        assert f'id="{element_id}"' in page
    assert 'href="001-x/report.html"' in page and "dependency-outage/restart-root-cause" in page
    assert "memory_leak on gateway" in page  # what no policy covers is said, not hidden


@needs_chromium
def test_the_campaign_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    page, _ = write_campaign_report(result(), tmp_path)
    dom = rendered_dom(page, tmp_path / "profile")
    assert 'data-plots-rendered="2"' in dom, dom[:500]
    assert 'data-kind-rows="5"' in dom and 'data-experiment-rows="4"' in dom
    assert 'data-points="5"' in dom  # 3 detected faults on the TTD plot, 2 recovered on the TTR plot


# ------------------------------------------------------------------------------------ the real engine
@pytest.mark.slow
@pytest.mark.alone  # see `make test`
def test_a_small_campaign_against_the_engine(tmp_path: Path) -> None:
    import mlflow

    from engine.chaos.api import default_detector
    from engine.chaos.campaign_run import MLFLOW_EXPERIMENT, run_campaign

    campaign = generate_campaign(8, ALONE_SEED)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines: list[str] = []
    out = tmp_path / "campaign"
    found = run_campaign(campaign, out, pipeline=default_detector(), tracking_uri=uri, echo=lines.append)
    assert [o["verdict"] for o in found.outcomes if o["verdict"] == "error"] == []
    assert sum(line.startswith("[") for line in lines) == 8  # one progress line per experiment
    (control,) = [o for o in found.outcomes if o["control"]]
    assert control["actions"] == [] and control["verdict"] == "passed"
    outages = [f for f in found.faults if f["kind"] == "dependency_outage"]
    assert len(outages) == 3 and all(f["healed"] for f in outages), outages
    m = found.metrics()
    assert m["experiments"] == 8 and m["faults"] == 11 and m["control_actions"] == 0
    for name in ("campaign.html", "summary.txt", "results.json", "campaign.json"):
        assert (out / name).is_file(), name
    assert all((out / o["report"]).is_file() for o in found.outcomes)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id])
    assert run.data.metrics["heal_rate"] == pytest.approx(m["heal_rate"])
    assert run.data.params["campaign.seed"] == str(ALONE_SEED)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "campaign")} >= {
        "campaign/campaign.html",
        "campaign/summary.txt",
    }
    with pytest.raises(InputError, match="already holds runs"):
        run_campaign(campaign, out, pipeline=None)
