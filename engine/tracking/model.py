"""The fitted stream detector as an MLflow pyfunc model that scores telemetry.

Why a custom pyfunc: the sklearn flavor's default serializer (skops) refuses PyOD classes, and its
pyfunc ``predict`` returns labels, while the engine needs scores it can threshold and debounce
itself. Requirements are given explicitly: MLflow's inference imports the model in a subprocess and
costs ~2 s per model, which dominates a sweep.

Layout inside the logged model: ``artifacts/detector/`` is the detector artifact
(``engine.detectors.artifact``: ``detector.json`` and a skops file per metric group's model; nothing in it
runs code at load). Loading it needs the ``engine`` package (selfheal) importable; its version is
recorded in the model metadata. Bundles copy ``artifacts/detector`` and load it without MLflow.

``predict`` takes long-format telemetry (``ts, service, metric, value``) and returns the scored
rows (``ts, service, role, score, anomalous``): history scored as the stream would score it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc

from engine import __version__
from engine.detectors.artifact import load_detector_dir, save_detector_dir
from engine.detectors.stream import StreamDetector

logger = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
DETECTOR_ARTIFACT = "detector"

#: Distributions the detector needs at load time, pinned to what fitted it.
_REQUIRED = (
    "mlflow",
    "numpy",
    "pandas",
    "polars",
    "pyarrow",
    "pyod",
    "scikit-learn",
    "scipy",
    "pydantic",
    "skops",
    "msgpack",
)


def pip_requirements() -> list[str]:
    """Explicit, pinned requirements (no inference: it costs ~2 s a model)."""
    out = []
    for dist in _REQUIRED:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return out


# MLflow nags on stderr about missing predict type hints when the class is created (its own
# wrapper resets warning filters, so a filter cannot silence it); see predict below for why.
with contextlib.redirect_stderr(io.StringIO()):

    class DetectorModel(mlflow.pyfunc.PythonModel):
        """pyfunc face of a StreamDetector: ``predict(points)`` -> scored rows (final scores in [0, 1])."""

        def load_context(self, context: Any) -> None:
            self.detector = load_detector_dir(context.artifacts[DETECTOR_ARTIFACT])

        # No type hints on purpose: MLflow 3 derives a signature from predict's hints and warns when they
        # are not list[...]; the explicit signature given at logging time is the contract.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            import polars as pl

            points = pl.from_pandas(model_input) if not isinstance(model_input, pl.DataFrame) else model_input
            scored = self.detector.score_history(points.select("ts", "service", "metric", "value"))
            return scored.select("ts", "service", "role", "score", "anomalous").to_pandas()


def log_detector(detector: StreamDetector, *, extra_metadata: dict[str, Any] | None = None) -> str:
    """Log ``detector`` as a pyfunc model in the active run; return the model URI."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("datetime", "ts"),
                ColSpec("string", "service"),
                ColSpec("string", "metric"),
                ColSpec("double", "value"),
            ]
        ),
        outputs=Schema(
            [
                ColSpec("datetime", "ts"),
                ColSpec("string", "service"),
                ColSpec("string", "role"),
                ColSpec("double", "score"),
                ColSpec("boolean", "anomalous"),
            ]
        ),
    )
    described = detector.describe()
    with tempfile.TemporaryDirectory(prefix="selfheal-model-") as tmp:
        folder = save_detector_dir(detector, Path(tmp) / DETECTOR_ARTIFACT)
        with _quiet_logging():
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={DETECTOR_ARTIFACT: str(folder)},
                pip_requirements=pip_requirements(),
                signature=signature,
                metadata={
                    "selfheal_version": __version__,
                    "output": "scored feature rows: final anomaly scores in [0, 1], higher = more anomalous",
                    "threshold": detector.threshold_,
                    "detector": detector.detector,
                    "groups": described["groups"],
                    "feature_names": detector.feature_names,
                    **(extra_metadata or {}),
                },
            )
    return str(info.model_uri)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """No artifact progress bars and no "input example" nag while logging (we give a signature and
    skip the example on purpose: validating it would load the model again)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def detector_dir(local_model_dir: str | Path) -> Path:
    """The detector artifact folder inside a downloaded pyfunc model."""
    return Path(local_model_dir) / "artifacts" / DETECTOR_ARTIFACT


def load_logged_detector(
    model_uri: str, *, tracking_uri: str | None = None, dst: str | Path | None = None
) -> StreamDetector:
    """Download a logged model (``runs:/``, ``models:/NAME/3``, ``models:/NAME@champion``) and load
    the StreamDetector inside it, without going through pyfunc."""
    from engine.tracking.registry import download_model

    local = download_model(model_uri, tracking_uri=tracking_uri, dst=dst)
    return load_detector_dir(detector_dir(local))
