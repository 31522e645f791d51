"""Run a campaign: every generated experiment against the real engine, one progress line each.

Each experiment is an ordinary chaos run (``engine.chaos.api.run_experiment``: its own simulated
platform, its own engine and journal, so no cooldown or rate limit leaks from one experiment into
the next) whose result is boiled down to an *outcome*: per fault whether it was detected and
healed (its expectation met) with TTD and TTR, and every executed action classified as the
remedy, an action on a victim, a wrong remedy on a root, or an action in a quiet control.

``workers > 1`` runs experiments in spawned processes, each with its own platform and engine; the
detector is fitted (or the bundle loaded) once in the parent and handed to them. Each worker still
races a 720x clock, so on a busy 2-core machine one worker is the safe default.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from engine.chaos.campaign import Campaign, Draw, Generated, write_campaign
from engine.chaos.report import write_report
from engine.chaos.results import RunResult
from engine.errors import InputError

log = logging.getLogger(__name__)

MLFLOW_EXPERIMENT = "chaos-campaign"

_WORKER: dict[str, Any] = {}  # set in each worker process by _init


def outcome(draw: Draw, result: RunResult, wall_s: float) -> dict[str, Any]:
    """What the campaign keeps of one run (small and JSON-able: it crosses process boundaries)."""
    roots = {f.service for f in result.faults}
    approved = {a["decision_id"] for a in result.approvals if a["status"] == "approved"}
    expected_approvals = {(a["action"], a["service"]) for a in result.record["experiment"]["approvals"]}
    actions = []
    for f in result.faults:
        actions.extend({**_act(a, approved), "role": "remedy", "fault": f.name} for a in f.actions)
    for a in result.unexpected:
        role = "control" if draw.control else ("wrong remedy on a root" if a["target"] in roots else "victim")
        actions.append({**_act(a, approved), "role": role, "fault": None})
    faults = []
    for f, drawn in zip(result.faults, draw.faults, strict=True):
        (exp,) = f.expectations
        faults.append(
            {
                "name": f.name,
                "kind": f.kind,
                "service": f.service,
                "scale": drawn.scale,
                "detected": f.detected is not None,
                "ttd_s": f.ttd_s,
                "ttr_s": f.ttr_s,
                "remedied": bool(exp["remedied"]),
                "healed": bool(exp["met"]),
                "why": exp["why"],
                "expected": exp["action"],
                "within_s": exp["within"],
            }
        )
    return {
        **_head(draw),
        "verdict": result.verdict,
        "reasons": result.reasons,
        "faults": faults,
        "actions": actions,
        "approvals": [
            {
                "action": a["action"],
                "target": a["target"],
                "status": a["status"],
                "approver": a["approver"],
                "expected": (a["action"], a["target"]) in expected_approvals,
            }
            for a in result.approvals
        ],
        "wall_s": wall_s,
        "platform_s": result.record["ended"] - result.record["started"],  # the method's span, on the clock
        "report": f"{draw.name}/report.html",
    }


def _head(draw: Draw) -> dict[str, Any]:
    """What every outcome, run or crashed, says of its draw."""
    return {
        "index": draw.index,
        "name": draw.name,
        "label": draw.label,
        "when": draw.when,
        "control": draw.control,
        "pair": len(draw.faults) == 2,
    }


def _act(a: dict[str, Any], approved: set[str]) -> dict[str, Any]:
    return {
        "action": a["action"],
        "target": a["target"],
        "rule": a["rule"],
        "risk": a["risk"],
        "verification": a["verification"] or a["status"],
        "approved": a["decision_id"] in approved,
    }


def _failed(draw: Draw, error: BaseException, wall_s: float) -> dict[str, Any]:
    """A run that crashed is a finding too: recorded, and the campaign goes on."""
    return {
        **_head(draw),
        "verdict": "error",
        "reasons": [f"{type(error).__name__}: {error}"],
        "faults": [
            {
                "name": f"f{i}",
                "kind": f.kind,
                "service": f.service,
                "scale": f.scale,
                "detected": False,
                "remedied": False,
                "ttd_s": None,
                "ttr_s": None,
                "healed": False,
                "why": "the run failed",
                "expected": None,
                "within_s": None,
            }
            for i, f in enumerate(draw.faults, start=1)
        ],
        "actions": [],
        "approvals": [],
        "wall_s": wall_s,
        "platform_s": None,
        "report": None,
    }


def _init(bundle: Any, pipeline: Any, speed: float | None) -> None:
    _WORKER.update(bundle=bundle, pipeline=pipeline, speed=speed)


def _run_one(item: Generated, out_dir: Path) -> dict[str, Any]:
    """One experiment in this process (a worker's, or the parent's when workers == 1)."""
    from engine.chaos.api import run_experiment

    started = time.perf_counter()
    try:
        result = run_experiment(
            item.experiment,
            out_dir / item.draw.name,
            bundle=_WORKER.get("bundle"),
            detector=_WORKER.get("pipeline"),
            speed=_WORKER.get("speed"),
            name=item.draw.name,
            echo=log.debug,
        )
        write_report([result], out_dir / item.draw.name, item.experiment.title)
    except Exception as exc:
        log.exception("campaign experiment %s failed to run", item.draw.name)
        return _failed(item.draw, exc, time.perf_counter() - started)
    return outcome(item.draw, result, time.perf_counter() - started)


def progress_line(done: int, total: int, o: dict[str, Any]) -> str:
    """``[ 7/50] 006-... Mon 04:10  FAILED  healed 1/2  TTD 2.1 min  unexpected 1  (4.3 s)``."""
    faults = o["faults"]
    healed = sum(f["healed"] for f in faults)
    ttd = [f["ttd_s"] for f in faults if f["ttd_s"] is not None]
    extra = sum(a["role"] != "remedy" for a in o["actions"])
    width = len(str(total))
    parts = [f"[{done:>{width}}/{total}] {o['name']:<58} {o['when']}  {o['verdict'].upper():<7}"]
    parts.append("quiet" if o["control"] else f"healed {healed}/{len(faults)}")
    if ttd:
        parts.append("TTD " + "/".join(f"{t / 60:.1f}" for t in ttd) + " min")
    if extra:
        parts.append(f"unexpected {extra}")
    parts.append(f"({o['wall_s']:.1f} s)")
    return "  ".join(parts)


def run_campaign(
    campaign: Campaign,
    out_dir: Path,
    *,
    bundle: Any = None,
    pipeline: Any = None,
    speed: float | None = None,
    workers: int = 1,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = log.info,
) -> Any:
    """Run every experiment of ``campaign``; write ``campaign.html``, ``summary.txt``; log to MLflow."""
    from engine.chaos.api import build_components
    from engine.chaos.campaign_report import CampaignResult, write_campaign_report

    started = time.perf_counter()
    ran = [g.draw.name for g in campaign.items if (out_dir / g.draw.name / "engine.sqlite").exists()]
    if ran:
        raise InputError(
            f"{out_dir} already holds runs of this campaign ({ran[0]}, ...)",
            hint="give the campaign a new --out folder, or delete that one",
        )
    write_campaign(campaign, out_dir)
    components = build_components(bundle, detector=pipeline)  # fits the default detector once
    if bundle is None:
        pipeline = components.pipeline
    detector = str(getattr(components.pipeline, "detector", "?"))
    total = len(campaign.items)
    outcomes: list[dict[str, Any]] = []
    echo(f"campaign {campaign.seed}: {total} experiments, {workers} worker(s), report in {out_dir}")
    if workers <= 1:
        _init(bundle, pipeline, speed)
        for item in campaign.items:
            outcomes.append(_run_one(item, out_dir))
            echo(progress_line(len(outcomes), total, outcomes[-1]))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init, initargs=(bundle, pipeline, speed)
        ) as pool:
            futures = [pool.submit(_run_one, item, out_dir) for item in campaign.items]
            for future in as_completed(futures):
                outcomes.append(future.result())
                echo(progress_line(len(outcomes), total, outcomes[-1]))
    outcomes.sort(key=lambda o: o["index"])
    result = CampaignResult(
        seed=campaign.seed,
        outcomes=outcomes,
        uncovered=campaign.uncovered,
        speed=float(speed or 720.0),
        workers=workers,
        detector=detector,
        bundle_version=str(components.bundle_version),
        wall_s=time.perf_counter() - started,
    )
    write_campaign_report(result, out_dir)
    if tracking_uri:
        log_campaign(result, out_dir, tracking_uri)
    return result


def log_campaign(result: Any, out_dir: Path, tracking_uri: str, run_id: str | None = None) -> str:
    """The campaign's figures as one MLflow run (or into ``run_id``, e.g. a candidate's); its id.

    Into another run the figures go under ``closed_loop.`` and the campaign's identity into tags
    (``selfheal.closed_loop.*``), not params: a candidate may be assessed again at another seed
    (a param may not change), and its own ``selfheal.kind`` stays what it was.
    """
    import mlflow

    from engine.home import use_tracking
    from engine.tracking.registry import CL

    use_tracking(tracking_uri)
    if run_id is None:
        mlflow.set_experiment(MLFLOW_EXPERIMENT)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"campaign-{result.seed}") as run:
        identity = {
            "campaign.seed": str(result.seed),
            "campaign.n": str(len(result.outcomes)),
            "campaign.speed": str(result.speed),
            "campaign.detector": result.detector,
            "campaign.bundle_version": result.bundle_version,
        }
        if run_id is None:
            mlflow.set_tags({"selfheal.kind": "chaos-campaign", "campaign.seed": str(result.seed)})
            mlflow.log_params(identity)
            mlflow.log_metrics(result.metrics())
            artifacts = "campaign"
        else:
            mlflow.set_tags(
                {f"selfheal.closed_loop.{k.removeprefix('campaign.')}": v for k, v in identity.items()}
            )
            mlflow.log_metrics({CL + k: v for k, v in result.metrics().items()})
            artifacts = "closed_loop"
        for name in ("campaign.html", "summary.txt", "campaign.json"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), artifact_path=artifacts)
        return str(run.info.run_id)
