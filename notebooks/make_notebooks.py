"""Write the four research notebooks (no outputs) from this one readable source.

Run: .venv/bin/python notebooks/make_notebooks.py
The notebooks stay thin: every cell calls functions in ``engine`` (engine.tracking.research,
engine.tracking.plots), so nothing production needs lives only here. The first code cell of each is
tagged ``parameters`` for papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def _params(source: str) -> nbformat.NotebookNode:
    cell = new_code_cell(source.strip())
    cell.metadata["tags"] = ["parameters"]
    return cell


def _nb(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "selfheal", "display_name": "selfheal (Python 3)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


EXPLORE = _nb(
    [
        new_markdown_cell(
            "# 01 · Explore telemetry\n\n"
            "Loads telemetry and incident windows from the DuckDB store into Polars and plots each metric "
            "per service with incidents shaded. The store is opened read-only for one query and closed "
            "again, so this notebook never blocks `selfheal ingest`."
        ),
        _params(
            """
home = None          # selfheal home folder (None: SELFHEAL_HOME or ./.selfheal)
services = None      # a list such as ["gateway", "inference-a"]; None means all
last_days = 3.0      # the most recent N days in the store
metrics = ["latency_p99_ms", "error_rate", "memory_util", "cpu_util"]
"""
        ),
        new_code_cell(
            """
import polars as pl

from engine.tracking.research import load_telemetry, plot_telemetry

points, incidents = load_telemetry(home, services=services, last_days=last_days)
print(f"{len(points):,} points, {len(incidents)} incidents, {points['ts'].min()} .. {points['ts'].max()}")
""".strip()
        ),
        new_code_cell(
            """
points.group_by("service", "metric").agg(
    pl.len().alias("points"), pl.col("value").mean().alias("mean"), pl.col("value").max().alias("max")
).sort("service", "metric")
""".strip()
        ),
        new_code_cell("incidents"),
        new_code_cell("fig = plot_telemetry(points, incidents, metrics=metrics)"),
    ]
)

TUNE = _nb(
    [
        new_markdown_cell(
            "# 02 · Tune a detector\n\n"
            "Fits one detector configuration on the earlier part of the data, judges it on the later part "
            "against incident windows, plots the calibrated scores, and logs the run to MLflow exactly as "
            "`selfheal experiment run` would (it *is* a one-configuration experiment)."
        ),
        _params(
            """
home = None                 # selfheal home folder
tracking_uri = None         # None: MLFLOW_TRACKING_URI or sqlite in the home folder
detector = "IForest"        # any registered detector or PyOD class name
params = {}                 # the detector's parameters; {} takes its defaults
services = None             # a list of services; None means all
start = None                # ISO time or None
end = None
train_fraction = 0.5
threshold_q = 0.995
features_from = "../experiments/demo_quick.yaml"   # take the feature spec of this experiment
"""
        ),
        new_code_cell(
            """
from engine.tracking.plots import pr_figure, scores_figure
from engine.tracking.research import tune_detector
from engine.tracking.spec import load_spec

features = load_spec(features_from).spec.features
result = tune_detector(
    detector, params, features=features, home=home, services=services, start=start, end=end,
    train_fraction=train_fraction, threshold_q=threshold_q, tracking_uri=tracking_uri,
)
print("MLflow run:", result.run_id)
{k: round(v, 4) for k, v in result.metrics.items()}
""".strip()
        ),
        new_code_cell(
            "fig = scores_figure(result.assessment.series, result.detector.threshold_, title=result.detector.name)"
        ),
        new_code_cell("fig = pr_figure(result.assessment.series)"),
    ]
)

SCHEDULED = _nb(
    [
        new_markdown_cell(
            "# 03 · Scheduled evaluation\n\n"
            "Evaluates the model behind `models:/<model_name>@<alias>` on the most recent data, logs the "
            "metrics to MLflow, and **fails** (so papermill and cron exit non-zero) when the quality metric "
            "is below `min_quality`. Run it with `selfheal evaluate notebooks/03_scheduled_evaluation.ipynb "
            "-p window_days 2 -p min_quality 0.3`; the executed copy is attached to the MLflow run."
        ),
        _params(
            """
home = None                     # selfheal home folder
tracking_uri = None             # None: MLFLOW_TRACKING_URI or sqlite in the home folder
model_name = "selfheal-detector"
alias = "champion"
window_days = 2.0               # evaluate on the most recent N days
metric = "f1"                   # quality metric checked against min_quality
min_quality = 0.3
mlflow_run_id = None            # filled by `selfheal evaluate`: the run the executed notebook joins
"""
        ),
        new_code_cell(
            """
from engine.tracking.plots import scores_figure
from engine.tracking.research import check_quality, evaluate_champion, gate_verdict

ev = evaluate_champion(
    model_name, alias=alias, window_days=window_days, home=home,
    tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id,
)
print(f"{ev.model_uri} = version {ev.version}; window {ev.window_start} .. {ev.window_end}; MLflow run {ev.mlflow_run_id}")
{k: round(v, 4) for k, v in ev.metrics.items()}
""".strip()
        ),
        new_code_cell("fig = scores_figure(ev.assessment.series, ev.assessment.threshold, title=ev.model_uri)"),
        new_markdown_cell(
            "What this version was promoted on: the gate's verdict, champion against challenger per "
            "criterion (detection metric, detection delay, false alarms per day, and the closed loop: "
            "faults healed, actions on victims, false actions)."
        ),
        new_code_cell(
            "print(gate_verdict(model_name, alias=alias, home=home, tracking_uri=tracking_uri))"
        ),
        new_code_cell("check_quality(ev.metrics, metric=metric, minimum=min_quality)"),
    ]
)

OUTCOMES = _nb(
    [
        new_markdown_cell(
            "# 04 · Outcomes: what the engine's actions achieved\n\n"
            "The engine's journal as evidence, after `selfheal journal export --to-store`: per policy "
            "rule, how many decisions it made, how many actions ran, how many of those were verified "
            "(the service healthy again), the median time from the anomaly to the verified recovery, "
            "and the approvals people rejected or let expire; per detector version, the alarms "
            "operators labeled and how many were false. Rejections and false alarms are the "
            "negative labels research can learn from (tables `outcomes` and `alarm_labels`)."
        ),
        _params(
            """
home = None          # selfheal home folder (None: SELFHEAL_HOME or ./.selfheal)
policies = None      # a list of policy names such as ["platform"]; None means all
"""
        ),
        new_code_cell(
            """
from engine.runtime.outcomes import (
    OUTCOMES, false_alarms_by_detector, load_outcomes, plot_effectiveness, policy_effectiveness,
)

outcomes, labels = load_outcomes(home, policies=policies)
print(f"{outcomes.height} decisions, {labels.height} labeled alarms")
{outcome: OUTCOMES[outcome] for outcome in sorted(set(outcomes["outcome"]))}
""".strip()
        ),
        new_code_cell("table = policy_effectiveness(outcomes)\ntable"),
        new_code_cell("fig = plot_effectiveness(table)"),
        new_code_cell("false_alarms_by_detector(labels)"),
    ]
)

NOTEBOOKS = {
    "01_explore_telemetry.ipynb": EXPLORE,
    "02_tune_detector.ipynb": TUNE,
    "03_scheduled_evaluation.ipynb": SCHEDULED,
    "04_outcomes.ipynb": OUTCOMES,
}


def main() -> None:
    for name, nb in NOTEBOOKS.items():
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
