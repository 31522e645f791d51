"""The one exception tree of selfheal.

Every error we raise on purpose is an ``EngineError``; the CLI turns one into a single clear line
(plus a hint saying what to do next) and exit code 2. Catch ``engine.errors.EngineError`` to catch
all of ours::

    EngineError                      base; ``hint`` says what to do next
    ├── ConfigError                  a setting, spec or policy file is wrong (file, path, hint)
    │   └── SpecError                a YAML/JSON spec failed validation; carries every problem
    ├── InputError                   user data cannot be read (no valid rows, unknown format)
    ├── StoreError                   the DuckDB telemetry store
    │   └── StoreLockedError         another process holds the DuckDB file
    ├── DetectorError                detector construction, fitting or scoring
    │   ├── NotFittedError           score() before fit()
    │   ├── DetectorParamError       a parameter fails its declared constraint
    │   └── FeatureMismatchError     NaN/inf or the wrong feature columns
    ├── EvaluationError              labels/windows/results that cannot be scored
    ├── TrackingError                MLflow runs, registry, promotion
    ├── PolicyError                  remediation policies: compile or run time
    ├── ActionError                  an actuator failed or refused
    ├── BundleError                  a bundle is missing, tampered with or incompatible
    └── RuntimeEngineError           the live engine process
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class EngineError(Exception):
    """Base of every error selfheal raises on purpose.

    ``hint`` is the next step for the person reading the message; the CLI prints it after the
    message on the same line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(EngineError):
    """A setting, spec or policy file is wrong."""


MAX_PROBLEM_TEXT = 400
"""Characters a problem's message (or hint, or path) may hold: a problem that quotes a user's value
must never print a whole document (an expanded YAML alias bomb once printed 722 MB)."""
MAX_LISTED = 50
"""Problems a ``SpecError`` message lists (every one stays in ``.problems``)."""


def _cap(text: str, limit: int = MAX_PROBLEM_TEXT) -> str:
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (file and path inside it), what, and how to fix it.

    Message, hint and path are capped at ``MAX_PROBLEM_TEXT`` characters whatever built them.
    """

    file: str
    path: str
    message: str
    hint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _cap(self.path))
        object.__setattr__(self, "message", _cap(self.message))
        if self.hint is not None:
            object.__setattr__(self, "hint", _cap(self.hint))

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        tail = f" ({self.hint})" if self.hint else ""
        return f"{where}: {self.message}{tail}"


class SpecError(ConfigError):
    """A spec failed validation. Carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        lines = "\n".join(str(p) for p in self.problems[:MAX_LISTED])
        if len(self.problems) > MAX_LISTED:
            lines += f"\n... and {len(self.problems) - MAX_LISTED} more"
        super().__init__(f"{len(self.problems)} problem(s):\n{lines}", hint=hint)


class InputError(EngineError):
    """User data cannot be read."""


class StoreError(EngineError):
    """The DuckDB telemetry store failed."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file (DuckDB allows one writing process at a time)."""


class DetectorError(EngineError):
    """Detector construction, fitting or scoring failed."""


class NotFittedError(DetectorError):
    """score() was called before fit()."""


class DetectorParamError(DetectorError):
    """A detector parameter fails its declared constraint."""


class FeatureMismatchError(DetectorError):
    """Input has NaN/inf or not the feature columns the detector was fitted on."""


class EvaluationError(EngineError):
    """Labels, windows or results that cannot be scored."""


class TrackingError(EngineError):
    """MLflow runs, registry or promotion failed."""


class PolicyError(EngineError):
    """A remediation policy failed to compile or to run."""


class ActionError(EngineError):
    """An actuator failed or refused to act."""


class BundleError(EngineError):
    """A bundle is missing, tampered with or incompatible."""


class RuntimeEngineError(EngineError):
    """The live engine process failed."""
