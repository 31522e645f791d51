"""The public face of chaos runs: run one experiment, or the game day, and write the report.

``run_experiment`` is what ``selfheal chaos run`` calls; ``run_game_day`` is what the demo calls
(the combined game day plus the approval-expiry variant, one report). Both log to MLflow when a
tracking URI is given (one run per experiment: the metrics of ``RunResult.metrics``, the report,
the summary and the journal as artifacts).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.chaos.experiment import Experiment, load_experiment
from engine.chaos.results import RunResult, analyse
from engine.shipped import shipped

if TYPE_CHECKING:
    from engine.bundle import Bundle

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = shipped("experiments") / "chaos"
RULES_DIR = shipped("rules")
GAME_DAY = ("game_day.yaml", "bad_deploy_expired.yaml")
MLFLOW_EXPERIMENT = "chaos"


@dataclass
class ChaosReport:
    results: list[RunResult]
    html: Path
    summary: Path
    out_dir: Path

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def text(self) -> str:
        return self.summary.read_text()


def resolve_experiment(ref: str | Path) -> Path:
    """A path, or a name of experiments/chaos (``memory_leak`` -> experiments/chaos/memory_leak.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (EXPERIMENTS_DIR / f"{ref}.yaml", EXPERIMENTS_DIR / str(ref)):
        if candidate.is_file():
            return candidate
    from engine.errors import InputError

    names = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
    raise InputError(f"no chaos experiment {ref!r}", hint=f"give a file or one of: {', '.join(names)}")


DEFAULT_DETECTOR = shipped("experiments") / "platform_default.yaml"
"""The experiment spec whose first configuration a chaos run fits when it is given no bundle."""


def default_detector() -> Any:
    """The platform's default detector, fitted in memory on the spec's synthetic history."""
    from engine.tracking.experiment import fit_spec

    return fit_spec(DEFAULT_DETECTOR)


def build_components(bundle: Path | str | Bundle | None = None, *, detector: Any = None) -> Any:
    """Engine components: from a bundle (a folder, trusted by default rules, or one already loaded),
    else a given detector, else the default detector."""
    from engine.runtime.components import assemble

    if bundle is not None:
        from engine.bundle import load_bundle
        from engine.bundle.runtime import components_from_bundle

        return components_from_bundle(load_bundle(bundle) if isinstance(bundle, str | Path) else bundle)
    if detector is None:
        detector = default_detector()
    return assemble(detector, RULES_DIR, bundle_version="chaos-default", detector_version="default")


def run_experiment(
    experiment: str | Path | Experiment,
    out_dir: Path,
    *,
    bundle: Path | str | Bundle | None = None,
    detector: Any = None,
    speed: float | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
    echo: Callable[[str], None] = log.info,
) -> RunResult:
    """Run one experiment into ``out_dir`` (engine journal, journal.json); returns its result."""
    from engine.chaos.runner import ChaosRun

    if isinstance(experiment, Experiment):
        exp, run_name = experiment, name or "experiment"
    else:
        path = resolve_experiment(experiment)
        exp, run_name = load_experiment(path), name or path.stem
    components = build_components(bundle, detector=detector)
    started = time.perf_counter()
    record = ChaosRun(
        exp, out_dir=out_dir, components=components, name=run_name, speed=speed, echo=echo
    ).run()
    record["wall_seconds"] = time.perf_counter() - started
    result = analyse(record)
    (out_dir / "journal.json").write_text(json.dumps({**record, "result": result.as_dict()}, default=str))
    if tracking_uri:
        _log_mlflow(result, out_dir, tracking_uri)
    return result


def run_experiments(
    experiments: list[str | Path],
    out_dir: Path,
    *,
    bundle: Path | str | Bundle | None = None,
    detector: Any = None,
    speed: float | None = None,
    tracking_uri: str | None = None,
    title: str = "selfheal chaos report",
    echo: Callable[[str], None] = log.info,
) -> ChaosReport:
    """Several experiments, one shared detector, one report (``report.html`` + ``summary.txt``)."""
    from engine.chaos.report import write_report

    if detector is None and bundle is None:
        echo(f"fitting the default detector ({DEFAULT_DETECTOR.name}) on clean synthetic history")
        detector = default_detector()
    results = []
    for ref in experiments:
        stem = Path(str(ref)).stem
        echo(f"== {stem}")
        results.append(
            run_experiment(
                ref,
                out_dir / stem,
                bundle=bundle,
                detector=detector,
                speed=speed,
                tracking_uri=tracking_uri,
                echo=echo,
            )
        )
    html, summary = write_report(results, out_dir, title)
    return ChaosReport(results, html, summary, out_dir)


def run_game_day(
    out_dir: Path,
    *,
    bundle: Path | str | Bundle | None = None,
    detector: Any = None,
    speed: float | None = None,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = log.info,
) -> ChaosReport:
    """The demo's last step: the combined game day and the approval-expiry variant, one report."""
    return run_experiments(
        [EXPERIMENTS_DIR / n for n in GAME_DAY],
        out_dir,
        bundle=bundle,
        detector=detector,
        speed=speed,
        tracking_uri=tracking_uri,
        title="selfheal game day",
        echo=echo,
    )


def _log_mlflow(result: RunResult, out_dir: Path, tracking_uri: str) -> None:
    import mlflow

    from engine.tracking.registry import use_tracking

    use_tracking(tracking_uri)
    mlflow.set_experiment(MLFLOW_EXPERIMENT)
    rec = result.record
    with mlflow.start_run(run_name=result.name):
        mlflow.set_tags(
            {
                "selfheal.kind": "chaos",
                "verdict": result.verdict,
                "kinds": ",".join(sorted({f.kind for f in result.faults})),
            }
        )
        mlflow.log_params(
            {
                "experiment": result.name,
                "speed": rec["speed"],
                "detector": rec.get("detector"),
                "bundle_version": rec.get("bundle_version"),
                "seed": rec["experiment"]["platform"]["seed"],
            }
        )
        mlflow.log_metrics({k.replace(".", "_"): v for k, v in result.metrics().items()})
        from engine.chaos.report import write_report

        write_report([result], out_dir)
        for name in ("report.html", "summary.txt", "journal.json"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name))
