"""Training data for the fault-kind model, from the synthetic platform's labeled incidents.

``selfheal synth`` labels one incident per fault, on its root service. Here the same generator
(``engine.telemetry.synth.generate``) runs with ``TRAINING`` over it: one row a minute (the engine
scores minute rows), more incidents a day, and each kind's strength over the range a chaos campaign
draws (0.5x to 5x the shipped experiments), so the model meets weak and strong faults alike.
Every service's history goes through the same ``Baselines`` the engine runs, in time order; a row
is a sample when its service stands out (``QUIET_Z``), with its recent latency (``Baselines``'
recent means, kept over every row as the engine keeps them):

- on an incident's root, inside its window: the incident's kind;
- anywhere, an hour or more away from every incident: ``unknown`` (noise and load swings).

Victims are not samples of a kind: where a fault is, is the localisation's question.
Evaluation is on seeds the model was not fitted on, per kind and per strength band.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.diagnosis.model import CREEP_WEIGHT, KINDS, MAX_DEPTH, TREES, KindModel
from engine.diagnosis.signature import METRICS, QUIET_Z, RECENT, Baselines, strength

log = logging.getLogger(__name__)

TRAINING: dict[str, Any] = {
    "interval_s": 60,
    "warmup_hours": 6.0,
    "min_gap_minutes": 60.0,
    "kinds": {
        # kind: (per day, duration minutes, magnitude range); magnitudes as in datasets/README.md
        "latency_creep": (1.0, (30, 240), (1.15, 2.5)),
        "memory_leak": (1.0, (20, 240), (1.0, 4.0)),
        "stale_index": (1.0, (30, 240), (0.2, 1.0)),
        "bad_deploy": (1.0, (20, 90), (0.05, 0.6)),
        "dependency_outage": (1.0, (10, 45), (0.3, 1.0)),
    },
}
"""What the training history changes in ``datasets/synth_platform.yaml``."""
MLFLOW_EXPERIMENT = "diagnosis"
MARGIN_S = 3600.0
PER_INCIDENT = 40
"""At most this many rows of one incident (evenly spaced): long incidents must not outvote short ones."""
BANDS = ("weak", "medium", "strong")


@dataclass(frozen=True)
class Samples:
    """Signatures with their labels, and for kind rows the incident's magnitude band and id."""

    z: np.ndarray
    recent: np.ndarray
    kind: np.ndarray
    band: np.ndarray
    incident: np.ndarray
    service: np.ndarray

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        return Samples(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__)
        )


def training_config() -> Any:
    from engine.simulation.config import load_config

    cfg = load_config()
    kinds = {
        kind: spec.model_copy(
            update={
                "per_day": TRAINING["kinds"][kind][0],
                "duration_minutes": TRAINING["kinds"][kind][1],
                "magnitude": TRAINING["kinds"][kind][2],
            }
        )
        for kind, spec in cfg.incidents.kinds.items()
    }
    incidents = cfg.incidents.model_copy(
        update={
            "kinds": kinds,
            "warmup_hours": TRAINING["warmup_hours"],
            "min_gap_minutes": TRAINING["min_gap_minutes"],
        }
    )
    return cfg.model_copy(update={"interval_s": TRAINING["interval_s"], "incidents": incidents})


def band_of(kind: str, magnitude: float) -> str:
    """Which third of the training range a magnitude falls in."""
    lo, hi = TRAINING["kinds"][kind][2]
    third = (magnitude - lo) / max(hi - lo, 1e-12) * 3
    return BANDS[int(np.clip(third, 0, 2))]


def samples(seed: int, days: float = 7.0) -> Samples:
    """The labeled signatures of one synthetic history (see the module docstring)."""
    from engine.telemetry.synth import generate

    data = generate(training_config(), days=days, seed=seed)
    wide = data.points.pivot(on="metric", index=["ts", "service"], values="value").sort("ts")
    faults = data.faults
    z_rows: list[np.ndarray] = []
    recent_rows: list[np.ndarray] = []
    kinds: list[str] = []
    bands: list[str] = []
    incidents: list[int] = []
    services: list[str] = []
    baselines = Baselines()
    cols = [m for m in METRICS if m in wide.columns]
    ts_all = (wide["ts"].dt.epoch("us").to_numpy() / 1e6).astype(np.float64)
    service_all = wide["service"].to_list()
    values_all = wide.select(cols).to_numpy()
    starts = np.array([f.start for f in faults])
    ends = np.array([f.label_end for f in faults])
    per: dict[int, list[int]] = {}
    for i, (ts, service) in enumerate(zip(ts_all.tolist(), service_all, strict=True)):
        row = values_all[i]
        values = {m: float(v) for m, v in zip(cols, row, strict=True) if v == v}
        z, recent = baselines.signature(service, ts, values)
        if strength(z) < QUIET_Z:
            continue
        inside = np.flatnonzero((starts <= ts) & (ts < ends))
        near = np.flatnonzero((starts - MARGIN_S <= ts) & (ts < ends + MARGIN_S))
        if len(inside) and faults[inside[0]].service == service:
            k = int(inside[0])
            per.setdefault(k, []).append(len(z_rows))
            kinds.append(faults[k].kind)
            bands.append(band_of(faults[k].kind, faults[k].magnitude))
            incidents.append(seed * 1000 + k)
        elif len(near) == 0:
            kinds.append("unknown")
            bands.append("")
            incidents.append(-1)
        else:
            continue  # a victim, or a root's recovery: not a sample
        z_rows.append(z)
        recent_rows.append(recent)
        services.append(service)
    keep = np.ones(len(z_rows), dtype=bool)
    for rows in per.values():
        if len(rows) > PER_INCIDENT:
            chosen = set(np.linspace(0, len(rows) - 1, PER_INCIDENT).round().astype(int).tolist())
            for j, r in enumerate(rows):
                keep[r] = j in chosen
    z_arr = np.asarray(z_rows).reshape(-1, len(METRICS))
    recent_arr = np.asarray(recent_rows).reshape(-1, len(RECENT))
    return Samples(
        z_arr[keep],
        recent_arr[keep],
        np.asarray(kinds)[keep],
        np.asarray(bands)[keep],
        np.asarray(incidents)[keep],
        np.asarray(services)[keep],
    )


def confusion(model: KindModel, s: Samples) -> dict[str, Any]:
    """Rows and incidents of held-out samples: accuracy per kind and band, and the confusion matrix."""
    predicted = model.predict(s.z, s.recent)
    labels = [k for k in KINDS if k in set(s.kind) | set(predicted)]
    matrix = [[int(np.sum((s.kind == a) & (predicted == b))) for b in labels] for a in labels]
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rows = s.kind == kind
        if not rows.any():
            continue
        entry: dict[str, Any] = {"rows": int(rows.sum()), "accuracy": float(np.mean(predicted[rows] == kind))}
        if kind != "unknown":
            ids = sorted(set(s.incident[rows].tolist()))
            votes = [_majority(predicted[s.incident == i]) == kind for i in ids]
            entry["incidents"] = len(ids)
            entry["incident_accuracy"] = float(np.mean(votes))
            entry["bands"] = {
                b: float(np.mean(predicted[rows & (s.band == b)] == kind))
                for b in BANDS
                if (rows & (s.band == b)).any()
            }
        per_kind[kind] = entry
    return {
        "labels": labels,
        "matrix": matrix,
        "per_kind": per_kind,
        "accuracy": float(np.mean(predicted == s.kind)),
    }


def _majority(values: np.ndarray) -> str:
    names, counts = np.unique(values, return_counts=True)
    return str(names[np.argmax(counts)])


def train(
    train_seeds: list[int],
    eval_seeds: list[int],
    *,
    days: float = 7.0,
    trees: int = TREES,
    max_depth: int = MAX_DEPTH,
    echo: Callable[[str], None] = log.info,
) -> tuple[KindModel, dict[str, Any]]:
    """Fit on ``train_seeds``' histories, evaluate on ``eval_seeds``' (held out)."""

    def history(seed: int, role: str) -> Samples:
        got = samples(seed, days)
        echo(
            f"seed {seed} ({role}): {len(got.kind)} rows, {len(set(got.incident.tolist()) - {-1})} incidents"
        )
        return got

    fit_on = Samples.concat([history(s, "fit") for s in train_seeds])
    held = Samples.concat([history(s, "held out") for s in eval_seeds])
    model = KindModel.fit(fit_on.z, fit_on.recent, fit_on.kind, trees=trees, max_depth=max_depth)
    report = {
        "train_seeds": train_seeds,
        "eval_seeds": eval_seeds,
        "days": days,
        "trees": trees,
        "max_depth": max_depth,
        "creep_weight": CREEP_WEIGHT,
        "train_rows": len(fit_on.kind),
        "in_sample": confusion(model, fit_on),
        "held_out": confusion(model, held),
    }
    keys = ("train_seeds", "eval_seeds", "days", "trees", "max_depth", "creep_weight", "train_rows")
    info = {k: report[k] for k in keys}
    info["held_out_accuracy"] = report["held_out"]["accuracy"]
    return dataclasses.replace(model, info=info), report


def confusion_plot(report: dict[str, Any], path: Path) -> Path:
    """The held-out confusion matrix (rows: true kind, columns: diagnosed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = report["held_out"]
    labels, matrix = held["labels"], np.asarray(held["matrix"], dtype=float)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}",
                ha="center",
                va="center",
                color="black" if share[i, j] < 0.6 else "white",
            )
    ax.set_xlabel("diagnosed")
    ax.set_ylabel("true kind (root rows)")
    ax.set_title(f"held-out seeds {report['eval_seeds']}: row accuracy {held['accuracy']:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_training(model: KindModel, report: dict[str, Any], model_path: Path, tracking_uri: str) -> str:
    """One MLflow run (experiment 'diagnosis'): parameters, held-out and in-sample accuracy per kind
    and band, the confusion matrix plot, the model file and the full report. Returns the run id."""
    import tempfile

    import mlflow

    from engine.home import use_tracking

    use_tracking(tracking_uri)
    mlflow.set_experiment(MLFLOW_EXPERIMENT)
    with mlflow.start_run(run_name=model.version) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"selfheal.kind": "diagnosis", "diagnosis.version": model.version})
        mlflow.log_params(
            {
                "train_seeds": ",".join(map(str, report["train_seeds"])),
                "eval_seeds": ",".join(map(str, report["eval_seeds"])),
                "days": report["days"],
                "trees": report["trees"],
                "max_depth": report["max_depth"],
                "creep_weight": report["creep_weight"],
                "train_rows": report["train_rows"],
            }
        )
        metrics: dict[str, float] = {}
        for split in ("held_out", "in_sample"):
            metrics[f"{split}_accuracy"] = report[split]["accuracy"]
            for kind, entry in report[split]["per_kind"].items():
                metrics[f"{split}_accuracy_{kind}"] = entry["accuracy"]
                if "incident_accuracy" in entry:
                    metrics[f"{split}_incident_accuracy_{kind}"] = entry["incident_accuracy"]
                for band, acc in entry.get("bands", {}).items():
                    metrics[f"{split}_accuracy_{kind}_{band}"] = acc
        mlflow.log_metrics(metrics)
        folder = Path(tmp)
        mlflow.log_artifact(str(confusion_plot(report, folder / "confusion_held_out.png")), "diagnosis")
        (folder / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        mlflow.log_artifact(str(folder / "report.json"), "diagnosis")
        mlflow.log_artifact(str(model_path), "diagnosis")
        return str(run.info.run_id)
