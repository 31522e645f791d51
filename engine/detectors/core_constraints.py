"""Declared parameter constraints, checked at fit, with scikit-learn's message format.

PyOD validates parameters in ``__init__`` only, so ``set_params`` bypasses it; detectors here check
their parameters against declared constraints when they are fitted instead, and say exactly what is
wrong: "The 'contamination' parameter of IForest must be a float in the range (0.0, 0.5]. Got 0.7
instead." We write the few lines ourselves rather than lean on scikit-learn's private
``_param_validation`` module, which may change without notice.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar, Self

import numpy as np

from engine.errors import DetectorParamError

__all__ = [
    "Bool",
    "Constraint",
    "InstanceOf",
    "Interval",
    "IsCallable",
    "IsNone",
    "Options",
    "ParamsMixin",
    "check_params",
    "unknown_param_message",
]


class Constraint:
    """One acceptable form of a parameter value."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """An int or float in a range; ``closed`` is one of "left", "right", "both", "neither"."""

    kind: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool | np.bool_):
            return False
        if self.kind is Integral:
            if not isinstance(value, Integral):
                return False
        elif not isinstance(value, Real):
            return False
        v = float(value)
        if math.isnan(v):
            return False
        left_ok = self.left is None or (v >= self.left if self.closed in ("left", "both") else v > self.left)
        right_ok = self.right is None or (
            v <= self.right if self.closed in ("right", "both") else v < self.right
        )
        return left_ok and right_ok

    def describe(self) -> str:
        fmt = (lambda x: str(int(x))) if self.kind is Integral else (lambda x: str(float(x)))
        lo = "-inf" if self.left is None else fmt(self.left)
        hi = "inf" if self.right is None else fmt(self.right)
        lb = "[" if self.closed in ("left", "both") and self.left is not None else "("
        rb = "]" if self.closed in ("right", "both") and self.right is not None else ")"
        article = "an int" if self.kind is Integral else "a float"
        return f"{article} in the range {lb}{lo}, {hi}{rb}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values of one type (strings, usually)."""

    kind: type
    values: frozenset[Any]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.kind) and value in self.values

    def describe(self) -> str:
        listed = ", ".join(repr(v) for v in sorted(self.values, key=str))
        return f"a {self.kind.__name__} among {{{listed}}}"


class IsNone(Constraint):
    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"


class Bool(Constraint):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool | np.bool_)

    def describe(self) -> str:
        return "a bool"


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """Any value of one type (e.g. a metric name that a library checks later)."""

    kind: type

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.kind)

    def describe(self) -> str:
        return f"a {self.kind.__name__}"


class IsCallable(Constraint):
    def accepts(self, value: Any) -> bool:
        return callable(value)

    def describe(self) -> str:
        return "a callable"


def _joined(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def constraint_message(param: str, owner: str, constraints: Sequence[Constraint], value: Any) -> str:
    """scikit-learn's wording for a value that meets none of the constraints."""
    return (
        f"The {param!r} parameter of {owner} must be "
        f"{_joined([c.describe() for c in constraints])}. Got {value!r} instead."
    )


def unknown_param_message(param: str, owner: str, valid: Iterable[str]) -> str:
    """Name the unknown parameter and the closest valid one."""
    close = difflib.get_close_matches(param, list(valid), n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{param!r} is not a parameter of {owner}{suggestion}"


def check_params(
    owner: str,
    params: Mapping[str, Any],
    valid: Iterable[str],
    constraints: Mapping[str, Sequence[Constraint]],
) -> None:
    """Raise one DetectorParamError listing every unknown or out-of-constraint parameter."""
    valid = list(valid)
    problems = []
    for key, value in params.items():
        if key not in valid:
            problems.append(unknown_param_message(key, owner, valid))
        elif key in constraints and not any(c.accepts(value) for c in constraints[key]):
            problems.append(constraint_message(key, owner, constraints[key], value))
    if problems:
        raise DetectorParamError(
            "\n".join(problems), hint=f"valid parameters of {owner}: {', '.join(sorted(valid))}"
        )


def _copied(value: Any) -> Any:
    """A private copy of a mutable parameter (a tail mapping, an ensemble's member list)."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


class ParamsMixin:
    """scikit-learn's parameter contract from two class-level declarations, for our own detectors.

    A detector declares ``name``, ``DEFAULTS`` (every parameter and its default: the list of valid
    names) and ``CONSTRAINTS``; it gets ``get_params``/``set_params`` (unknown names fail at once,
    values at the next fit, as in scikit-learn), ``validate_params`` (call it first in ``fit``), a
    ``repr`` of its parameters and the registry factory ``from_params``. Dict and list values are
    copied in and out, so a caller mutating its spec cannot change a detector behind its back.
    Checks that one parameter's constraint cannot express go in ``_check_params_together``.
    """

    name: str
    stateful: ClassVar[bool] = False
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    CONSTRAINTS: ClassVar[Mapping[str, Sequence[Constraint]]] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every parameter with its current value."""
        return {k: _copied(getattr(self, k)) for k in self.DEFAULTS}

    def set_params(self, **params: Any) -> Self:
        """Change parameters (unknown names fail now, values at the next fit); returns self."""
        unknown = {k: v for k, v in params.items() if k not in self.DEFAULTS}
        if unknown:
            check_params(self.name, unknown, self.DEFAULTS, self.CONSTRAINTS)
        for key, value in params.items():
            setattr(self, key, _copied(value))
        return self

    def validate_params(self) -> None:
        """Check every parameter against its constraints (``fit`` does this too)."""
        check_params(self.name, self.get_params(), self.DEFAULTS, self.CONSTRAINTS)
        self._check_params_together()

    def _check_params_together(self) -> None:
        """Checks beyond one parameter's constraints (subclasses add theirs)."""

    @classmethod
    def from_params(cls, params: dict[str, Any], random_state: int | None) -> Self:
        """Registry factory: ``random_state`` seeds the detector where it takes one and ``params``
        leaves it unset; a deterministic detector ignores it."""
        det = cls().set_params(**params)
        if "random_state" in cls.DEFAULTS and "random_state" not in params:
            det.set_params(random_state=random_state)
        return det
