"""The fitted ScoringPipeline as an MLflow pyfunc model that returns calibrated scores.

Why a custom pyfunc: the sklearn flavor's default serializer (skops) refuses PyOD classes, and its
pyfunc ``predict`` returns labels, while the engine needs scores it can threshold and debounce
itself. Requirements are given explicitly: MLflow's inference imports the model in a subprocess and
costs ~2 s per model, which dominates a sweep.

Layout inside the logged model: ``artifacts/pipeline/`` holds ``pipeline.pkl`` (the object) and
``pipeline.json`` (detector, params, threshold, feature spec), plus ``feature_spec.yaml``. Loading
the pickle needs the ``engine`` package (selfheal) importable; its version is recorded in the model
metadata. Bundles copy ``artifacts/pipeline`` and load it with ``ScoringPipeline.load`` without MLflow.
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
import numpy as np
import yaml

from engine import __version__
from engine.detectors.pipeline import ScoringPipeline

logger = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
PIPELINE_ARTIFACT = "pipeline"

#: Distributions the pickled pipeline needs at load time, pinned to what fitted it.
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
    "cloudpickle",
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

    class PipelineModel(mlflow.pyfunc.PythonModel):
        """pyfunc face of a ScoringPipeline: ``predict(frame)`` -> calibrated scores in [0, 1].

        The input is a DataFrame with the pipeline's feature columns (extra columns such as ``ts`` or
        ``service`` are ignored) or a matrix in feature order.
        """

        def load_context(self, context: Any) -> None:
            self.pipeline = ScoringPipeline.load(context.artifacts[PIPELINE_ARTIFACT])

        # No type hints on purpose: MLflow 3 derives a signature from predict's hints and warns when they
        # are not list[...]; the explicit signature given at logging time is the contract.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            names = self.pipeline.feature_names
            if hasattr(model_input, "columns"):
                X = np.asarray(model_input[names], dtype=np.float64)
            else:
                X = np.asarray(model_input, dtype=np.float64)
            return self.pipeline.score_matrix(X)


def log_pipeline(pipeline: ScoringPipeline, *, extra_metadata: dict[str, Any] | None = None) -> str:
    """Log ``pipeline`` as a pyfunc model in the active run; return the model URI."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in pipeline.feature_names]),
        outputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]),
    )
    with tempfile.TemporaryDirectory(prefix="selfheal-model-") as tmp:
        folder = pipeline.save(Path(tmp) / PIPELINE_ARTIFACT)
        (folder / "feature_spec.yaml").write_text(
            yaml.safe_dump(pipeline.feature_spec.model_dump(mode="json"), sort_keys=False)
        )
        with _quiet_logging():
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={PIPELINE_ARTIFACT: str(folder)},
                pip_requirements=pip_requirements(),
                signature=signature,
                metadata={
                    "selfheal_version": __version__,
                    "output": "calibrated anomaly scores in [0, 1], higher = more anomalous",
                    "threshold": pipeline.threshold_,
                    "detector": pipeline.detector,
                    "feature_names": pipeline.feature_names,
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


def pipeline_dir(local_model_dir: str | Path) -> Path:
    """The pipeline folder inside a downloaded pyfunc model."""
    return Path(local_model_dir) / "artifacts" / PIPELINE_ARTIFACT


def load_pipeline(
    model_uri: str, *, tracking_uri: str | None = None, dst: str | Path | None = None
) -> ScoringPipeline:
    """Download a logged model (``runs:/``, ``models:/NAME/3``, ``models:/NAME@champion``) and load
    the ScoringPipeline inside it, without going through pyfunc."""
    from engine.tracking.registry import download_model

    local = download_model(model_uri, tracking_uri=tracking_uri, dst=dst)
    return ScoringPipeline.load(pipeline_dir(local))
