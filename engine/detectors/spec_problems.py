"""Detector parameters checked without fitting, as spec problems (file, path, message, hint).

Every spec that names a detector (experiment sweeps, family comparisons) uses this one check, so a
misspelt or out-of-range parameter fails at validation, not after the data was read.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from engine.detectors.registry import make_detector
from engine.errors import DetectorError, DetectorParamError, Problem

_PARAM_IN_MESSAGE = (
    re.compile(r"^'(?P<key>[^']+)' is not a parameter of .*?(?: \(did you mean (?P<close>'[^']+')\?\))?$"),
    re.compile(r"^The '(?P<key>[^']+)' parameter of "),
)


def detector_param_problems(
    file: str,
    prefix: str,
    detector: str,
    params: dict[str, Any],
    grid: dict[str, list[Any]] | None = None,
    *,
    max_configs: int | None = None,
) -> list[Problem]:
    """Problems with ``detector``'s fixed ``params`` and every point of its ``grid``, without fitting.

    Each problem points at the offending entry (``PREFIX.params.KEY``, ``PREFIX.grid.KEY`` or, for a
    swept value, ``PREFIX.grid.KEY[j]``) so a sweep's many configurations report one bad value once.
    Checks that span several parameters are reported at ``PREFIX`` with the configuration's values.
    A grid of more than ``max_configs`` configurations is not expanded (the caller reports its size).
    """
    grid = grid or {}
    keys = sorted(grid)
    combos = 1
    for key in keys:
        combos *= len(grid[key])
    if max_configs is not None and combos > max_configs:
        return []
    found: dict[tuple[str, str], Problem] = {}
    for picks in itertools.product(*(range(len(grid[k])) for k in keys)):
        chosen = dict(zip(keys, picks, strict=True))
        config = {**params, **{k: grid[k][j] for k, j in chosen.items()}}
        try:
            det = make_detector(detector, config)
            validate = getattr(det, "validate_params", None)
            if callable(validate):
                validate()
        except DetectorParamError as exc:
            for problem in _param_problems(file, prefix, exc, params, chosen, config):
                found.setdefault((problem.path, problem.message), problem)
        except DetectorError as exc:
            found.setdefault(
                (f"{prefix}.class", exc.message), Problem(file, f"{prefix}.class", exc.message, exc.hint)
            )
    return list(found.values())


def _param_problems(
    file: str,
    prefix: str,
    exc: DetectorParamError,
    params: dict[str, Any],
    chosen: dict[str, int],
    config: dict[str, Any],
) -> list[Problem]:
    """One Problem per line of a DetectorParamError, placed at the parameter the line names."""
    out = []
    for line in exc.message.splitlines():
        key = close = None
        for pattern in _PARAM_IN_MESSAGE:
            match = pattern.match(line)
            if match:
                key, close = match.group("key"), match.groupdict().get("close")
                break
        hint = f"did you mean {close}?" if close else exc.hint
        if close:
            line = line.removesuffix(f" (did you mean {close}?)")
        if key in chosen:
            unknown = line.startswith(f"'{key}' is not a parameter")
            path = f"{prefix}.grid.{key}" if unknown else f"{prefix}.grid.{key}[{chosen[key]}]"
        elif key in params:
            path = f"{prefix}.params.{key}"
        else:
            inner = ", ".join(f"{k}={v!r}" for k, v in sorted(config.items()))
            line = f"{line} (with {inner})" if inner else line
            path = prefix
        out.append(Problem(file, path, line, hint))
    return out
