"""Every file a person writes, read one way: the safe YAML loader and the validation-error translator.

Policies, the topology, targets, experiment specs, chaos experiments, the engine config, the
synthetic platform config, detector and feature specs are YAML that a person wrote (or that anyone
with write access to a folder the engine reads wrote). Each loader reads it with ``read_yaml`` (or
``load_yaml``) and validates it with pydantic; ``problems_from`` turns pydantic's errors into
``Problem`` lines. One loader and one translator mean one set of rules and one wording everywhere.

The loader's rules, each the answer to an input that once cost a traceback, minutes or gigabytes:

- UTF-8 strictly: a bad byte is a problem naming its line, never a ``UnicodeDecodeError``;
- plain data only (PyYAML's safe constructors): no tag runs code;
- at most ``MAX_BYTES`` per file and ``MAX_DEPTH`` levels of nesting (the composer recurses: a
  document nested 1,000 levels deep was a ``RecursionError``);
- aliases may add at most ``MAX_ALIAS_NODES`` values when expanded: a 1.5 kB "billion laughs"
  document otherwise expands to gigabytes in whatever walks it (validation, error messages);
  an alias inside the node it names (a recursive structure) is refused;
- duplicate keys are refused naming both lines (YAML would silently keep the last value);
- ``.nan`` and ``.inf`` are refused: a bound of NaN can never pass, and no spec needs infinity;
- values the constructor cannot build (an integer of 5,000 digits, a timestamp in year 99999)
  are problems with their line.

Problems echo at most ``MAX_ECHO`` characters of any value the user wrote (``echo``); the
``Problem`` itself caps its message, so no error can print a whole expanded document.

The translator's wording (one for every spec): ``path: unknown key 'x' (did you mean 'y'?)`` where
``path`` is the mapping holding the key, ``path: missing required key 'x'``, and for values the
validator's message with ``(got VALUE)``. The hints come from the model at that path, so a
"did you mean" only offers keys that are valid *there*. Pydantic's union bookkeeping (arm names,
discriminator tags, validator wrappers in the location) is removed from paths, and of the arms of a
union only the one closest to what was written is reported.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import Problem, SpecError

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_ECHO",
    "did_you_mean",
    "echo",
    "expect_mapping",
    "format_path",
    "join_path",
    "load_yaml",
    "one_of",
    "problems_from",
    "read_yaml",
]

MAX_BYTES = 1 << 20
"""Largest spec file read (1 MiB): the biggest file we ship is under 10 kB."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and lists (our deepest spec nests 7 levels)."""
MAX_ALIAS_NODES = 10_000
"""Values aliases may add to a document when expanded (beyond the values written out)."""
MAX_ECHO = 80
"""Characters of a user's value echoed in a problem."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------------------- helpers


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a problem may quote of a user's value.

    A cycle or a huge structure is never walked whole: ``reprlib`` limits depth and items first.
    """
    import reprlib

    short = reprlib.Repr()  # keyword arguments need Python 3.12
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(str(word)[:MAX_ECHO], list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def one_of(choices: Iterable[str]) -> str:
    """A short "one of: a, b, c" list for hints."""
    items = sorted(set(choices))
    return "one of: " + ", ".join(items) if items else "none defined"


def format_path(loc: Sequence[str | int]) -> str:
    """``rules[2].when.services`` from ``('rules', 2, 'when', 'services')``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = echo(part, 40) if len(str(part)) > 40 else str(part)
            out += f".{text}" if out else text
    return out


def join_path(prefix: str, loc: Sequence[str | int]) -> str:
    """``prefix`` followed by ``loc`` (``rules[0]`` + ``('when',)`` is ``rules[0].when``)."""
    tail = format_path(loc)
    if not prefix:
        return tail
    if not tail:
        return prefix
    return prefix + tail if tail.startswith("[") else f"{prefix}.{tail}"


def expect_mapping(data: Any, file: str, path: str = "", *, hint: str | None = None) -> list[Problem]:
    """No problem when ``data`` is a mapping, else one saying what was found instead."""
    if isinstance(data, dict):
        return []
    got = "an empty file" if data is None and not path else type(data).__name__
    return [Problem(file, path, f"expected a mapping of keys, got {got}", hint)]


# ------------------------------------------------------------------------------------ YAML loader


class _Refused(yaml.MarkedYAMLError):
    """A rule of this loader (depth, aliases, duplicates, non-finite numbers) refused the document."""

    def __init__(self, message: str, mark: Any, hint: str) -> None:
        super().__init__(problem=message, problem_mark=mark)
        self.hint = hint


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the rules of the module docstring (checked while composing)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._written = 0  # nodes written out in the document
        self._expanded: dict[int, int] = {}  # id(node) -> its size with every alias expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if id(node) not in self._expanded:
                raise _Refused(
                    f"alias *{event.anchor} refers to a node that contains it (a recursive structure)",
                    event.start_mark,
                    "write the value out instead of an alias to its own parent",
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(
                f"nested deeper than {MAX_DEPTH} levels",
                self.peek_event().start_mark,
                "specs nest a few levels; flatten this value",
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._written += 1
        size = 1 + sum(self._expanded.get(id(child), 1) for child in _children(node))
        self._expanded[id(node)] = size
        if size > self._written + MAX_ALIAS_NODES:
            raise _Refused(
                f"aliases expand this value to {size:,} values (the document writes {self._written:,}; "
                f"at most {MAX_ALIAS_NODES:,} more are allowed)",
                node.start_mark,
                "write the values out, or share fewer anchors (a YAML alias bomb is refused)",
            )
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # ``<<: *defaults`` is meant to be overridden by the keys beside it
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # unhashable: PyYAML reports it with its own message
                if line != key_node.start_mark.line + 1:
                    raise _Refused(
                        f"duplicate key {echo(key)} (first on line {line}, again on line "
                        f"{key_node.start_mark.line + 1})",
                        key_node.start_mark,
                        "keep one of them: YAML would silently use the last value",
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # int('9' * 5000), a timestamp in year 99999
            raise _Refused(
                f"cannot read this value: {str(exc)[:MAX_ECHO]}",
                node.start_mark,
                "write a plain number or text",
            ) from exc

    def _finite_float(self, node: ScalarNode) -> float:
        value = self.construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Refused(
                f"{echo(node.value)} is not a finite number",
                node.start_mark,
                "specs use finite numbers only: write a real bound, or leave the key out",
            )
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:float", _SpecLoader._finite_float)


def _children(node: Node) -> Iterable[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return (child for pair in node.value for child in pair)
    return ()


def read_yaml(path: Path | str, data: bytes | str | None = None) -> tuple[Any, list[Problem]]:
    """The parsed document, or the problems (with line and column) that stopped it.

    ``data`` is the file's content when the caller already holds it (a bundle's verified bytes):
    then ``path`` only names the file in problems and is never read.
    """
    file = str(path)
    if data is None:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except OSError as exc:
            return None, [Problem(file, "", f"cannot read: {exc.strerror or exc}", "check the path")]
    if len(data) > MAX_BYTES:
        return None, [
            Problem(
                file, "", f"larger than {MAX_BYTES >> 20} MiB", "a spec is a few kB: is it the right file?"
            )
        ]
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            return None, [
                Problem(
                    file,
                    f"line {line}",
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                    "save the file as UTF-8",
                )
            ]
    else:
        text = data
    if Path(file).suffix == ".json":
        return _read_json(file, text)
    loader = None
    try:
        loader = _SpecLoader(text)
        return loader.get_single_data(), []
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(file, exc, text)]
    except RecursionError:  # a belt for the depth rule's braces
        return None, [Problem(file, "", f"nested too deeply (at most {MAX_DEPTH} levels)")]
    finally:
        if loader is not None:
            loader.dispose()


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:MAX_ECHO]} is not a finite number")
    return value


def _read_json(file: str, text: str) -> tuple[Any, list[Problem]]:
    """JSON (a ``.json`` file) under the same rules: PyYAML reads YAML 1.1, which is not quite JSON."""
    try:
        doc = json.loads(
            text, object_pairs_hook=_json_object, parse_constant=_json_constant, parse_float=_json_float
        )
    except json.JSONDecodeError as exc:
        return None, [Problem(file, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON: {exc.msg}")]
    except _DuplicateKey as exc:
        key = echo(exc.args[0])
        return None, [Problem(file, "", f"duplicate key {key}", "keep one: JSON readers keep only the last")]
    except ValueError as exc:  # NaN/Infinity, or an integer of more than 4,300 digits
        return None, [Problem(file, "", f"not valid JSON: {str(exc)[:MAX_ECHO]}", "write finite numbers")]
    except RecursionError:
        return None, [Problem(file, "", f"nested deeper than {MAX_DEPTH} levels")]
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return None, [Problem(file, "", f"nested deeper than {MAX_DEPTH} levels")]
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return doc, []


def _yaml_problem(file: str, exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: PyYAML gives an offset
        line = text[: exc.position].count("\n") + 1
        return Problem(
            file,
            f"line {line}",
            f"not valid YAML: control character #x{exc.character:04x} is not allowed",
            'remove it (or quote it as an escape, e.g. "\\t")',
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(exc, _Refused):
        return Problem(file, where, str(exc.problem), exc.hint)
    context, problem = getattr(exc, "context", None), getattr(exc, "problem", None)
    reason = ": ".join(str(p) for p in (context, problem) if p) or str(exc)
    hint = None if isinstance(exc, ComposerError | ConstructorError) else "check indentation and quoting"
    return Problem(file, where, f"not valid YAML: {reason[:200]}", hint)


def load_yaml(path: Path | str, data: bytes | str | None = None, *, hint: str | None = None) -> Any:
    """``read_yaml`` that raises ``SpecError`` instead of returning problems."""
    doc, problems = read_yaml(path, data)
    if problems:
        raise SpecError(problems, hint=hint)
    return doc


# ------------------------------------------------------------------------- validation translator


def problems_from(
    exc: ValidationError, *, file: str, model: type[BaseModel], prefix: str = ""
) -> list[Problem]:
    """One ``Problem`` per pydantic error of validating ``model`` (wording in the module docstring).

    ``prefix`` is where the validated value sits in its file (``rules[2].then``), so a section
    validated on its own still reports its full path.
    """
    located = [_Located(err, model) for err in exc.errors(include_url=False)]
    misspelled: set[tuple[str, str]] = set()  # (path, key) a typo stands for: its "missing" is noise
    for item in located:
        if item.kind == "extra_forbidden":
            close = difflib.get_close_matches(item.key, item.allowed_keys(), n=1, cutoff=0.6)
            if close:
                misspelled.add((item.path(prefix), close[0]))
    located = [i for i in located if not (i.kind == "missing" and (i.path(prefix), i.key) in misspelled)]
    problems = [item.problem(file, prefix) for item in _closest_arms(located)]
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


class _Located:
    """One pydantic error with its location cleaned of union markers and the types found there."""

    def __init__(self, err: Any, root: type[BaseModel]) -> None:
        self.err = err
        self.kind: str = err["type"]
        loc = tuple(err["loc"])
        keyed = self.kind in ("extra_forbidden", "missing") and loc
        walked = loc[:-1] if keyed else loc
        self.clean, self.arms, self.types = _walk(root, walked)
        self.key = str(loc[-1]) if keyed else ""

    def path(self, prefix: str) -> str:
        return join_path(prefix, self.clean)

    def allowed_keys(self) -> list[str]:
        keys: list[str] = []
        for tp in _flatten(self.types):
            if _is_model(tp):
                keys += [f.alias or name for name, f in tp.model_fields.items() if not f.exclude]
        return list(dict.fromkeys(keys))

    def problem(self, file: str, prefix: str) -> Problem:
        err, kind, path = self.err, self.kind, self.path(prefix)
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            keys = self.allowed_keys()
            hint = did_you_mean(self.key, keys) or (f"allowed here: {', '.join(keys)}" if keys else None)
            return Problem(file, path, f"unknown key {echo(self.key)}", hint)
        if kind == "missing":
            return Problem(file, path, f"missing required key {echo(self.key)}")
        if kind == "union_tag_invalid":
            field, tags = str(ctx.get("discriminator", "kind")).strip("'"), _tags(ctx)
            tag = str(ctx.get("tag", ""))
            hint = did_you_mean(tag, tags) or one_of(tags)
            return Problem(file, path, f"unknown {field} {echo(tag)}", hint)
        if kind == "union_tag_not_found":
            field = str(ctx.get("discriminator", "kind")).strip("'")
            return Problem(file, path, f"missing required key {field!r}", self._tag_hint(field))
        message = str(err["msg"])
        for lead in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(lead)
        if kind in ("value_error", "assertion_error"):
            return Problem(file, path, message)
        hint = None
        if kind in ("literal_error", "enum"):
            hint = did_you_mean(str(err.get("input")), _literals(self.types))
        elif kind == "model_type" and (keys := self.allowed_keys()):
            hint = f"write a mapping of {', '.join(keys)}"
        return Problem(file, path, f"{message} (got {echo(err.get('input'))})", hint)

    def _tag_hint(self, field: str) -> str | None:
        tags: list[str] = []
        for tp in _flatten(self.types):
            if _is_model(tp) and field in tp.model_fields:
                tags += _literals([tp.model_fields[field].annotation])
        return one_of(tags) if tags else None


def _closest_arms(located: list[_Located]) -> list[_Located]:
    """Of the arms of each union, keep the errors of the arm closest to what was written.

    Pydantic reports why *every* arm failed (a step that is neither a fault nor a pause fails both).
    An arm refused on shape alone (every error at the arm itself: "should be a valid string") lost
    to an arm that got further; among the rest, the one with the fewest errors is the user's intent.
    """
    unions = sorted({arm[0] for item in located for arm in item.arms}, key=len)
    for where in unions:
        by_arm: dict[str, list[_Located]] = {}
        for item in located:
            for prefix, name in item.arms:
                if prefix == where:
                    by_arm.setdefault(name, []).append(item)
                    break
        if len(by_arm) < 2:
            continue
        deep = {
            name: items
            for name, items in by_arm.items()
            if any(len(i.clean) > len(where) or i.kind in ("missing", "extra_forbidden") for i in items)
        }
        contenders = deep or by_arm
        fewest = min(len(items) for items in contenders.values())
        losers = {
            id(i) for name, items in by_arm.items() if len(contenders.get(name, ())) != fewest for i in items
        }
        located = [item for item in located if id(item) not in losers]
    return located


def _flatten(tps: Iterable[Any]) -> list[Any]:
    """The concrete options behind annotations (``Annotated``, unions and ``None`` unwrapped)."""
    out: list[Any] = []
    for tp in tps:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            out += _flatten([typing.get_args(tp)[0]])
        elif origin in (typing.Union, types.UnionType):
            out += _flatten(typing.get_args(tp))
        elif tp is not type(None):
            out.append(tp)
    return out


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(
    root: type[BaseModel], loc: Sequence[Any]
) -> tuple[list[str | int], list[tuple[tuple[str | int, ...], str]], list[Any]]:
    """Follow ``loc`` through the annotations from ``root``.

    Returns the location without pydantic's markers, the union arms met on the way as
    ``(location of the union, arm marker)``, and the types found at the end.
    """
    current: list[Any] = [root]
    clean: list[str | int] = []
    arms: list[tuple[tuple[str | int, ...], str]] = []
    for part in loc:
        options = _flatten(current)
        if not options or Any in options:  # free-form data (``params: dict[str, Any]``): all the user's
            clean.append(part)
            current = [Any]
            continue
        if isinstance(part, int):
            nxt = []
            for tp in options:
                args = typing.get_args(tp)
                if typing.get_origin(tp) in (list, tuple, set, frozenset, Sequence) and args:
                    nxt.append(args[0])
            clean.append(part)
            current = nxt or [Any]
            continue
        fields = [
            f.annotation
            for tp in options
            if _is_model(tp)
            for name, f in tp.model_fields.items()
            if part in (name, f.alias)
        ]
        if fields:
            clean.append(part)
            current = fields
            continue
        values = [
            typing.get_args(tp)[1]
            for tp in options
            if typing.get_origin(tp) in (dict, Mapping) and len(typing.get_args(tp)) == 2
        ]
        if values:
            clean.append(part)
            current = values
            continue
        # not a key of anything here: a marker pydantic put in the location (a union arm's name, a
        # discriminator's tag, a validator wrapper): drop it, and narrow to that arm when we can
        arms.append((tuple(clean), str(part)))
        chosen = [tp for tp in options if getattr(tp, "__name__", None) == part] or [
            tp for tp in options if _is_model(tp) and part in _model_tags(tp)
        ]
        current = chosen or options
    return clean, arms, current


def _model_tags(model: type[BaseModel]) -> list[str]:
    """Literal values of a model's fields: the tags a discriminated union may select it by."""
    return [v for f in model.model_fields.values() for v in _literals([f.annotation])]


def _literals(tps: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for tp in _flatten(tps):
        if typing.get_origin(tp) is typing.Literal:
            out += [str(a) for a in typing.get_args(tp)]
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            out += [str(m.value) for m in tp]
    return out


def _tags(ctx: Mapping[str, Any]) -> list[str]:
    """The tags pydantic lists in ``expected_tags`` (``"'raw', 'zscore'"``)."""
    return [t.strip().strip("'\"") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
