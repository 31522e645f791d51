"""MLflow "models from code" entry point: the file MLflow copies into every logged selfheal model.

Logging the wrapper by file path instead of as a cloudpickled object keeps the model readable
and lets MLflow load it by importing ``engine`` rather than unpickling a class definition.
"""

from mlflow.models import set_model

from engine.tracking.model import DetectorModel

set_model(DetectorModel())
