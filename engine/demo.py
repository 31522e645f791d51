"""The main job (``selfheal demo`` / ``make demo``): the whole loop end to end on synthetic data.

synth -> ingest into the DuckDB store -> experiment sweep tracked in MLflow -> closed-loop
assessment (each candidate bundled and run through the same small seeded chaos campaign) -> promote
the sweep's best healer (champion/challenger gate: detection AND healing; a first champion must
pass the floor) -> the scheduled evaluation notebook through papermill ->
bundle the champion with the policies in rules/ (built, signed with the home's own key, verified)
-> game day: the simulated platform and the engine, faults injected, healed or not -> an HTML
report and a short summary with where everything is and how to open it.

The game day runs the bundle the demo just promoted and built: what the research loop chose is
what heals the platform (``selfheal chaos run game_day --bundle DIR`` does the same; the summary
prints that command).

Idempotent by construction: the synthetic data is generated from a fixed seed and start time and
the store does not duplicate rows it already has, so a second run sees the same data fingerprint;
a new sweep is recorded and assessed in the same campaign, and the gate keeps the champion unless
the challenger beats it.

The demo's campaign is small (``CAMPAIGN_N`` experiments drawn from ``CAMPAIGN_SEED``: a quiet
control, then a latency creep paired with a bad deploy) so that the demo stays a few minutes; a
full assessment is ``selfheal chaos assess SWEEP --n 20 --seed S`` (README).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine.errors import InputError
from engine.hints import program, selfheal_command
from engine.home import Home
from engine.shipped import shipped
from engine.tracking.registry import DEFAULT_MODEL

logger = logging.getLogger(__name__)

DEFAULT_SPEC = shipped("experiments") / "demo_quick.yaml"
EVALUATION_NOTEBOOK = shipped("notebooks") / "03_scheduled_evaluation.ipynb"
RULES_DIR = shipped("rules")
#: A fixed start keeps the data, and so its fingerprint, identical across runs.
SYNTH_START = datetime(2026, 1, 5)
EVALUATION_WINDOW_DAYS = 2.0
QUALITY_METRIC = "f1"
QUALITY_MINIMUM = 0.1
#: The closed-loop campaign every candidate of the demo's sweep faces (chosen for what it draws: a
#: quiet control, where any action is a false one, and two concurrent faults to heal).
CAMPAIGN_SEED = 3
CAMPAIGN_N = 2


@dataclass
class DemoSummary:
    home: Home
    tracking_uri: str
    points_inserted: int = 0
    points_total: int = 0
    incidents: int = 0
    sweep_run_id: str = ""
    best_label: str = ""
    best_run_id: str = ""
    best_metrics: dict[str, float] = field(default_factory=dict)
    metric: str = ""
    assessment: str = ""
    promotion: str = ""
    champion_version: str = ""
    notebook_verdict: str = ""
    notebook_output: Path | None = None
    notebook_ok: bool = False
    evaluation_metrics: dict[str, float] = field(default_factory=dict)
    bundle_path: Path | None = None
    bundle_version: str = ""
    bundle_verified: bool = False
    game_day_html: Path | None = None
    game_day_text: str = ""
    game_day_passed: bool | None = None  # None: not run
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            bool(self.champion_version)
            and self.notebook_ok
            and self.bundle_verified
            and self.game_day_passed is not False
        )

    def render(self) -> str:
        m = self.best_metrics

        def f(key: str) -> str:
            v = m.get(key)
            return "-" if v is None else f"{v:.3f}"

        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        backend = self.tracking_uri
        lines = [
            "",
            "== selfheal demo: summary ==",
            f"data        {self.points_total:,} points ({self.points_inserted:,} new), "
            f"{self.incidents} incidents in {self.home.telemetry_db}",
            f"best        {self.best_label}  (run {self.best_run_id}, sweep {self.sweep_run_id})",
            f"metrics     F1 {f('f1')}  precision {f('precision')}  recall {f('recall')}  "
            f"delay {f('mean_delay_s')}s  false alarms/day {f('false_alarms_per_day')}  NAB {f('nab_score')}",
            f"closed loop {self.assessment}",
            f"promotion   {self.promotion}",
            f"champion    models:/{DEFAULT_MODEL}@champion = version {self.champion_version or 'none'}",
            f"evaluation  {self.notebook_verdict}",
            f"MLflow      {backend}  (artifacts: {self.home.mlflow_artifacts})",
            f"bundle      {self.bundle_path}  {self.bundle_version}  "
            f"({'verified' if self.bundle_verified else 'NOT verified'})",
        ]
        if self.game_day_passed is not None:
            verdict = "every fault healed" if self.game_day_passed else "NOT every fault healed"
            lines += [f"game day    {verdict}; report: {self.game_day_html}", self.game_day_text.rstrip()]
        notebook = self.notebook_output or self.home.notebooks_out
        lines += [
            f"timing      {timing}",
            "",
            "open them:",
            "  " + shlex.join([program("mlflow"), "ui", "--backend-store-uri", backend, "--port", "5000"]),
            "  " + shlex.join([program("jupyter"), "lab", str(notebook)]),
            "  " + selfheal_command(self.home, "models", "list", DEFAULT_MODEL),
            "  " + selfheal_command(self.home, "bundle", "inspect", str(self.bundle_path)),
            "  " + selfheal_command(self.home, "chaos", "run", "game_day", "--bundle", str(self.bundle_path)),
        ]
        if self.game_day_html:
            lines.append(f"  open {self.game_day_html} in a browser")
        return "\n".join(lines)


def run_demo(
    home: Home,
    *,
    days: float = 10.0,
    seed: int = 0,
    spec: str | Path | None = None,
    tracking_uri: str | None = None,
    workers: int | None = None,
    game_day: bool = True,
    campaign_n: int = CAMPAIGN_N,
    campaign_seed: int = CAMPAIGN_SEED,
    echo: Callable[[str], None] = logger.info,
) -> DemoSummary:
    """Run the whole loop; the returned summary says what happened at each step."""
    from engine.bundle import build_bundle, verify_bundle
    from engine.bundle.signing import Trust, local_signing_key
    from engine.chaos.assess import assess
    from engine.telemetry.store import TelemetryStore
    from engine.telemetry.synth import generate, load_config
    from engine.tracking import registry
    from engine.tracking.experiment import run_experiment
    from engine.tracking.notebooks import run_notebook

    spec_path = Path(spec) if spec else DEFAULT_SPEC
    if not spec_path.is_file():
        raise InputError(f"experiment spec {spec_path} not found", hint="pass --spec experiments/<name>.yaml")
    home.ensure()
    uri = registry.resolve_tracking_uri(home, tracking_uri)
    summary = DemoSummary(home=home, tracking_uri=uri)
    steps = 8 if game_day else 7

    t = time.perf_counter()
    echo(f"[1/{steps}] synth: {days:g} days of the synthetic platform (seed {seed})")
    data = generate(load_config(), days=days, seed=seed, start=SYNTH_START)
    summary.seconds["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    echo(f"[2/{steps}] ingest: {len(data.points):,} points into {home.telemetry_db}")
    with TelemetryStore(home.telemetry_db) as store:
        summary.points_inserted = store.insert_points(data.points, source="synth")
        store.insert_incidents(data.incidents)
        info = store.summary()
    summary.points_total = int(info.get("points", len(data.points)))
    summary.incidents = int(info.get("incidents", len(data.incidents)))
    summary.seconds["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    echo(f"[3/{steps}] experiment: {spec_path}")
    sweep = run_experiment(spec_path, home=home, tracking_uri=uri, workers=workers, progress=True)
    best = sweep.best
    assert best is not None and best.run_id is not None
    summary.sweep_run_id = sweep.parent_run_id
    summary.best_label = best.config.label
    summary.best_run_id = best.run_id
    summary.best_metrics = dict(best.metrics)
    summary.metric = sweep.metric
    summary.seconds["experiment"] = time.perf_counter() - t
    echo(sweep.table())

    t = time.perf_counter()
    echo(
        f"[4/{steps}] closed-loop assessment: each candidate bundled, {campaign_n} chaos experiment(s) "
        f"of campaign seed {campaign_seed} against each (simulated clock)"
    )
    assessed = assess(
        [sweep.parent_run_id],
        home=home,
        tracking_uri=uri,
        n=campaign_n,
        seed=campaign_seed,
        top=len(sweep.results),
        workers=workers,
        echo=echo,
    )
    echo(assessed.table())
    healer = assessed.best
    summary.assessment = (
        f"{len(assessed.candidates)} candidate(s), campaign seed {campaign_seed} n {campaign_n}: best healer "
        f"{healer.label} ({healer.metrics.get('faults_healed', 0):.0f}/{healer.metrics.get('faults', 0):.0f} "
        f"faults healed)"
    )
    summary.seconds["assess"] = time.perf_counter() - t

    t = time.perf_counter()
    echo(f"[5/{steps}] promote: sweep {sweep.parent_run_id} (its best healer) as {DEFAULT_MODEL}")
    result = registry.promote(sweep.parent_run_id, DEFAULT_MODEL, tracking_uri=uri)
    summary.promotion = result.summary()
    echo(result.summary())
    echo(result.table())
    champion = registry.champion_version(DEFAULT_MODEL, tracking_uri=uri)
    summary.seconds["promote"] = time.perf_counter() - t
    if champion is None:  # a first candidate below the floor: nothing to evaluate, bundle or run
        return summary
    summary.champion_version = champion

    t = time.perf_counter()
    echo(f"[6/{steps}] scheduled evaluation: {EVALUATION_NOTEBOOK.name} through papermill")
    run = run_notebook(
        EVALUATION_NOTEBOOK,
        {
            "model_name": DEFAULT_MODEL,
            "window_days": EVALUATION_WINDOW_DAYS,
            "metric": QUALITY_METRIC,
            "min_quality": QUALITY_MINIMUM,
        },
        home=home,
        tracking_uri=uri,
    )
    summary.notebook_verdict = run.verdict()
    summary.notebook_output = run.output
    summary.notebook_ok = run.ok
    summary.seconds["evaluation"] = time.perf_counter() - t

    t = time.perf_counter()
    echo(f"[7/{steps}] bundle: models:/{DEFAULT_MODEL}@champion with the policies in {RULES_DIR}")
    built = build_bundle(
        f"models:/{DEFAULT_MODEL}@{registry.CHAMPION}",
        RULES_DIR,
        tracking_uri=uri,
        bundles_dir=home.bundles,
        force=True,
        signing_key=local_signing_key(home, echo),
    )
    report = verify_bundle(built.path, digest=built.digest, trust=Trust.for_home(home))
    summary.bundle_path = built.path
    summary.bundle_version = built.version
    summary.bundle_verified = report.ok
    summary.seconds["bundle"] = time.perf_counter() - t

    if game_day:
        from engine.bundle import load_bundle
        from engine.chaos.api import run_game_day

        t = time.perf_counter()
        echo(f"[8/{steps}] game day: the bundle on the simulated platform, faults injected (simulated clock)")
        loaded = load_bundle(built.path, digest=built.digest, trust=Trust.for_home(home))
        chaos = run_game_day(home.new_run("chaos", "game-day"), bundle=loaded, tracking_uri=uri, echo=echo)
        summary.game_day_html = chaos.html
        summary.game_day_text = chaos.text()
        summary.game_day_passed = chaos.passed
        summary.seconds["game day"] = time.perf_counter() - t
    return summary
