"""Diagnosis: which fault, and where (the stage between event making and the policies).

- ``signature``: each service's metrics as signed distances from its own recent normal;
- ``model``: the fault kind from a signature (a random forest, JSON arrays, trained offline);
- ``localise``: the root cause over the topology, held over a window;
- ``stage``: ``Signer`` (with scoring) and ``DiagnosisStage``, run by the engine and shadow replay;
- ``training``: labeled signatures from the synthetic platform, fit, held-out evaluation.

The shipped model (``experiments/diagnosis/kind_model.json``) is what ``selfheal diagnosis
train`` wrote; the engine uses it unless its components bring another.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from engine.diagnosis.model import KINDS, KindModel
from engine.diagnosis.stage import DiagnosisStage, Signer
from engine.shipped import shipped

__all__ = ["KINDS", "DiagnosisStage", "KindModel", "Signer", "shipped_model", "shipped_model_path"]


def shipped_model_path() -> Path:
    return shipped("experiments") / "diagnosis" / "kind_model.json"


@cache
def shipped_model() -> KindModel:
    """The shipped fault-kind model (read once per process; the model is immutable)."""
    return KindModel.load(shipped_model_path())
