"""Closed-loop assessment: each detector candidate, shipped as a bundle, faces the same chaos campaign.

Why: a sweep ranks candidates by detection on history (event F1), but what the product promises is
healing. A detector that alarms early and often can win F1 and still heal nothing: its events may
name the wrong metrics for the policies, arrive after the remedy's deadline, or trigger actions on
services that were only victims. So the best ``k`` candidates of a sweep are each registered (a
bundle ships a fixed model version), bundled with the shipped policies exactly as production would
(signed with the home's key, verified before loading), and run against one campaign drawn from a
shared seed, so every candidate faces the same faults at the same hours. The campaign's figures
(heal rate, TTD/TTR, actions on victims, actions in quiet controls) go into each candidate's MLflow
run under ``closed_loop.`` (``engine.chaos.campaign_run.log_campaign``), where the promotion gate
(``engine.tracking.registry.promote``) reads them.

Candidates run in spawned worker processes, one campaign each, or as Ray tasks (``--executor ray``,
``engine.pools``); this process does all the MLflow logging either way. Every worker races the
engine's x720 clock, so on a loaded machine fewer workers than cores is the safe choice. The ranking puts
healing first (no victim or false action, then most faults healed) and the detection metric after.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.home import Home
from engine.pools import Say, check, open_pool
from engine.tables import text_table
from engine.tracking import registry

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One assessed candidate: its run, bundle and closed-loop figures (``metrics`` from the campaign)."""

    run_id: str
    label: str
    version: str
    detection: float | None  # the sweep's selection metric
    bundle: Path
    out_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def false_or_victim_actions(self) -> float:
        return sum(self.metrics.get(k, 0.0) for k in registry.CL_MUST_BE_ZERO)

    def rank_key(self) -> tuple[float, float, float]:
        """Healing first (clean, then faults healed), the detection metric after (higher is better)."""
        detection = self.detection if self.detection is not None else -math.inf
        return (float(self.false_or_victim_actions == 0), self.metrics.get("faults_healed", 0.0), detection)


@dataclass
class Assessment:
    seed: int
    n: int
    metric: str
    candidates: list[Candidate]  # best first
    out_dir: Path
    wall_s: float
    workers: int

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def table(self) -> str:
        head = [
            "rank",
            "candidate",
            self.metric,
            "healed",
            "victim",
            "false",
            "unapproved",
            "TTD med",
            "wall",
        ]
        rows = [head]
        for i, c in enumerate(self.candidates, start=1):
            m = c.metrics
            ttd = [v for k, v in m.items() if k.startswith("ttd_median_s_")]
            rows.append(
                [
                    str(i),
                    f"{c.label[:40]} (v{c.version}, run {c.run_id[:8]})",
                    "-" if c.detection is None else f"{c.detection:.3f}",
                    f"{m.get('faults_healed', 0):.0f}/{m.get('faults', 0):.0f}",
                    f"{m.get('victim_actions', 0):.0f}",
                    f"{m.get('control_actions', 0):.0f}",
                    f"{m.get('unapproved_high_risk_actions', 0):.0f}",
                    f"{sorted(ttd)[len(ttd) // 2] / 60:.1f} min" if ttd else "-",
                    f"{c.wall_s:.0f} s",
                ]
            )
        return text_table(rows)


def assess(
    refs: list[str],
    *,
    home: Home,
    tracking_uri: str,
    n: int,
    seed: int,
    top: int = 2,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    name: str = registry.DEFAULT_MODEL,
    out_dir: Path | None = None,
    echo: Callable[[str], None] = logger.info,
) -> Assessment:
    """Assess the best ``top`` candidates of a sweep (or the given configuration runs) in one campaign.

    The campaigns run where ``executor`` says (``engine.pools``: ``local`` processes, or ``ray``
    with ``workers`` CPUs or the cluster at ``address``); the figures logged are the same.

    Logs each candidate's figures into its run, and on a sweep tags the winner
    (``selfheal.best_closed_loop_run``) so that ``selfheal promote SWEEP`` puts it forward.
    """
    from engine.bundle import build_bundle
    from engine.bundle.signing import local_signing_key
    from engine.chaos.api import RULES_DIR
    from engine.chaos.campaign import generate_campaign
    from engine.chaos.campaign_run import log_campaign
    from engine.policy.loader import load_policies

    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}", hint="e.g. --top 2")
    check(executor, address)
    started = time.perf_counter()
    home.ensure()
    runs: list[Any] = []
    sweep = None
    client = registry.tracking_client(tracking_uri)
    for ref in refs:
        found, sweep_run = registry.top_candidates(client, ref, top=top)
        runs.extend(r for r in found if r.info.run_id not in {x.info.run_id for x in runs})
        sweep = sweep_run if len(refs) == 1 else None
    policies = load_policies(RULES_DIR)  # what every candidate's bundle ships and the campaign expects
    campaign = generate_campaign(n, seed, policies=policies)  # before any build: a bad --n fails fast
    workers = max(1, min(len(runs), workers or os.cpu_count() or 1))
    folder = out_dir or home.new_run("chaos", f"assess-{seed}")
    key = local_signing_key(home, echo)
    metric = runs[0].data.tags[registry.TAG_METRIC]
    candidates = []
    for i, run in enumerate(runs, start=1):
        version = registry.register_version(client, name, run)
        label = run.info.run_name or run.info.run_id
        echo(f"[{i}/{len(runs)}] bundle: {label} as {name} v{version}")
        built = build_bundle(
            f"models:/{name}/{version}",
            RULES_DIR,
            tracking_uri=tracking_uri,
            output=home.bundles / "candidates" / f"{name}-v{version}",
            force=True,
            signing_key=key,
        )
        candidates.append(
            Candidate(
                run.info.run_id,
                label,
                version,
                registry.selection_value(run),
                built.path,
                folder / f"v{version}-{run.info.run_id[:8]}",
            )
        )
    where = "worker process(es)" if executor == "local" else "Ray task(s) at once"
    echo(
        f"campaign seed {seed}: {n} experiments against each of {len(candidates)} candidate(s), "
        f"{workers} {where}; reports in {folder}"
    )
    with open_pool(executor, workers=workers, address=address, echo=echo) as pool:
        results = {
            candidates[i].run_id: result
            for i, result in pool.map(_campaign_of, (campaign, home.root), candidates)
        }
    for c in candidates:
        result = results[c.run_id]
        c.metrics, c.wall_s = result.metrics(), result.wall_s
        log_campaign(result, c.out_dir, tracking_uri, run_id=c.run_id)
        client.set_tag(c.run_id, registry.TAG_CL_POLICY, policies.fingerprint[:16])
        client.set_model_version_tag(name, c.version, "selfheal.closed_loop", _figures(c, seed, n))
    candidates.sort(key=Candidate.rank_key, reverse=True)
    if sweep is not None:
        client.set_tag(sweep.info.run_id, registry.TAG_BEST_CLOSED_LOOP, candidates[0].run_id)
    return Assessment(seed, n, metric, candidates, folder, time.perf_counter() - started, workers)


def _figures(c: Candidate, seed: int, n: int) -> str:
    m = c.metrics
    return (
        f"campaign seed {seed} n {n}: healed {m.get('faults_healed', 0):.0f}/{m.get('faults', 0):.0f}, "
        f"victim actions {m.get('victim_actions', 0):.0f}, false actions {m.get('control_actions', 0):.0f}"
    )


def _campaign_of(shared: tuple[Any, Path], candidate: Candidate, say: Say) -> Any:
    """One candidate's campaign (a pool's task): its bundle loaded (verified against the home's
    trusted keys) and run; progress lines go to ``say`` prefixed with the version."""
    from engine.bundle import load_bundle
    from engine.bundle.signing import Trust
    from engine.chaos.campaign_run import run_campaign

    campaign, root = shared
    bundle = load_bundle(candidate.bundle, trust=Trust.for_home(Home.resolve(root)))
    return run_campaign(
        campaign, candidate.out_dir, bundle=bundle, echo=lambda line: say(f"v{candidate.version} {line}")
    )
