"""Turn YAML and pydantic failures into ``Problem`` lines: file, path, message, hint.

Pydantic reports ``('rules', 2, 'when', 'servces')``; an operator wants
``rules[2].when: unknown key 'servces' (did you mean 'services'?)``. Unknown-key hints come from the
model the key was found in, so they list only keys that are valid *there*.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import Problem
from engine.policy._util import did_you_mean


def format_path(loc: Sequence[str | int]) -> str:
    """``rules[2].when.services`` from ``('rules', 2, 'when', 'services')``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def join_path(prefix: str, loc: Sequence[str | int]) -> str:
    tail = format_path(loc)
    if not prefix:
        return tail
    if not tail:
        return prefix
    return prefix + tail if tail.startswith("[") else f"{prefix}.{tail}"


def _model_keys(model: type[BaseModel]) -> list[str]:
    """Keys a user may write (internal fields, marked ``exclude``, are not offered)."""
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _unwrap(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_unwrap(arg))
        return out
    return [tp]


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found by walking ``loc`` from ``root`` (None when the walk leaves models)."""
    current: list[Any] = [root]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            for option in _unwrap(tp):
                origin = typing.get_origin(option)
                if isinstance(option, type) and issubclass(option, BaseModel) and isinstance(part, str):
                    for name, f in option.model_fields.items():
                        if part in (name, f.alias):
                            nxt.append(f.annotation)
                elif origin in (list, tuple) and isinstance(part, int):
                    nxt.extend(typing.get_args(option)[:1])
                elif origin is dict and isinstance(part, str):
                    nxt.extend(typing.get_args(option)[1:2])
        current = nxt
    for tp in current:
        for option in _unwrap(tp):
            if isinstance(option, type) and issubclass(option, BaseModel):
                return option
    return None


def from_validation(
    exc: ValidationError, *, file: str, model: type[BaseModel], prefix: str = ""
) -> list[Problem]:
    """One Problem per pydantic error, with "did you mean" for unknown keys."""
    problems: list[Problem] = []
    errors = [(err, _clean_loc(err["loc"])) for err in exc.errors()]
    misspelled: set[tuple[str, str]] = set()  # (path, key) a typo stands for: its "missing" is noise
    for err, loc in errors:
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            close = difflib.get_close_matches(
                str(loc[-1]), _model_keys(owner) if owner else [], n=1, cutoff=0.6
            )
            if close:
                misspelled.add((join_path(prefix, loc[:-1]), close[0]))
    for err, loc in errors:
        path = join_path(prefix, loc[:-1])
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            owner = _model_at(model, loc[:-1])
            keys = _model_keys(owner) if owner else []
            hint = did_you_mean(key, keys) or (f"allowed here: {', '.join(keys)}" if keys else None)
            problems.append(Problem(file, path, f"unknown key {key!r}", hint))
            continue
        if err["type"] == "missing":
            if (path, str(loc[-1])) not in misspelled:
                problems.append(Problem(file, path, f"missing required key {loc[-1]!r}"))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{err.get('input')!r} is not allowed: {msg}"
        problems.append(Problem(file, join_path(prefix, loc), msg))
    return _dedupe(problems)


def _clean_loc(loc: Sequence[Any]) -> list[str | int]:
    """Drop pydantic's union-branch markers (``function-before[...]``) from an error location."""
    return [p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def read_yaml(path: Path, data: bytes | str | None = None) -> tuple[Any, list[Problem]]:
    """The parsed YAML document, or the problem (with line and column) that stopped the parser.

    ``data`` is the file's content when the caller already holds it (a bundle's verified bytes):
    then ``path`` only names the file in problems and is never read.
    """
    if data is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            return None, [Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]
    elif isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [Problem(str(path), "", f"not UTF-8 text: {exc}")]
    else:
        text = data
    try:
        return yaml.safe_load(text), []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(str(path), where, f"not valid YAML: {reason}", "check indentation and quoting")]


def expect_mapping(data: Any, file: str, path: str = "") -> list[Problem]:
    if isinstance(data, dict):
        return []
    got = "an empty file" if data is None else type(data).__name__
    return [Problem(file, path, f"expected a mapping of keys, got {got}")]
