"""The action registry: actuators with typed parameters, found by name.

An action is a plain function ``fn(ctx: ActionContext, *, param: Type = default, ...) -> ActionResult``
registered with ``@register_action``. Its signature *is* its parameter schema: policies bind their
``params`` against it with ``inspect.signature(fn).bind`` at validation time (as Chaos Toolkit does)
and values are checked with pydantic against the annotations, so a typo or a wrong type fails at
``selfheal rules validate``, never mid-incident.

Built-ins (``engine.actions.builtin``) register through the same decorator a third party uses; the
registry imports them, then every module named by the ``selfheal.actions`` entry-point group, on
first use. There are no special cases for built-ins anywhere else.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from engine.errors import ActionError
from engine.plugins import load_entry_points
from engine.specs import did_you_mean, echo, one_of

if TYPE_CHECKING:
    from engine.actions.targets import TargetsConfig

log = logging.getLogger(__name__)

Risk = Literal["low", "medium", "high"]
ENTRY_POINT_GROUP = "selfheal.actions"
BUILTIN_MODULES: tuple[str, ...] = ("engine.actions.builtin",)

ActionFn = Callable[..., Any]
Preflight = Callable[[Mapping[str, Any], "TargetsConfig"], list[tuple[str, str]]]
"""``preflight(params, targets) -> [(param path suffix, message)]``: what an action needs of the
targets file (checked at ``rules validate`` and when a bundle is built or loaded, not mid-incident)."""


@dataclass(frozen=True)
class ActionSpec:
    """A registered action: its function, declared risk and inverse, and parameter schema."""

    name: str
    fn: ActionFn
    risk: Risk
    inverse: str | None
    description: str
    module: str
    params_model: type[BaseModel] = field(repr=False)
    literal: frozenset[str] = frozenset()
    preflight: Preflight | None = field(default=None, repr=False)
    via_backend: bool = False

    @functools.cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The parameters a policy may set (everything after ``ctx``); cached: every decision asks."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p for p in params}

    def signature_text(self) -> str:
        """``scale(replicas: int | None = None, delta: int | None = None)`` for listings and hints."""
        hints = typing.get_type_hints(self.fn)
        parts = []
        for name, param in self.parameters.items():
            text = f"{name}: {_type_name(hints.get(name, Any))}"
            if param.default is not inspect.Parameter.empty:
                text += f" = {param.default!r}"
            parts.append(text)
        return f"{self.name}({', '.join(parts)})"

    def bind_problems(self, params: Mapping[str, Any], *, skip_values: set[str]) -> list[tuple[str, str]]:
        """Every reason ``params`` do not fit this action, as (param path suffix, message) pairs.

        Binding with ``inspect.signature`` catches unknown and missing names; pydantic then checks
        the literal values (templated values, listed in ``skip_values``, are checked at render time;
        whether a parameter may be templated at all is the policy loader's check, on ``literal``).
        """
        problems: list[tuple[str, str]] = []
        known = self.parameters
        for name in params:
            if name not in known:
                hint = did_you_mean(name, known) or (
                    f"{self.name} takes {one_of(known)}" if known else f"{self.name} takes no parameters"
                )
                problems.append((name, f"{name!r} is not a parameter of {self.name} ({hint})"))
        try:
            inspect.signature(self.fn).bind(None, **{k: v for k, v in params.items() if k in known})
        except TypeError as exc:
            problems.append(("", f"parameters do not fit {self.signature_text()}: {exc}"))
        literal = {k: v for k, v in params.items() if k in known and k not in skip_values}
        hints = typing.get_type_hints(self.fn, include_extras=True)  # validators too
        for name, value in literal.items():
            adapter_model = create_model("_One", __config__=ConfigDict(strict=False), v=(hints[name], ...))
            try:
                adapter_model.model_validate({"v": value})
            except ValidationError as exc:
                reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                problems.append((name, f"{echo(value)} is not a valid {name} for {self.name}: {reason}"))
        return problems

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Typed values for ``params`` (rendered, no templates left), or ActionError naming the field."""
        try:
            model = self.params_model.model_validate(dict(params))
        except ValidationError as exc:
            lines = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ActionError(
                f"parameters for action {self.name!r} are invalid: {lines}",
                hint=f"the action's signature is {self.signature_text()}",
            ) from exc
        return {name: getattr(model, name) for name in self.parameters}


_REGISTRY: dict[str, ActionSpec] = {}
_loaded = False


def register_action(
    name: str | None = None,
    *,
    risk: Risk = "medium",
    inverse: str | None = None,
    description: str | None = None,
    literal: Iterable[str] = (),
    preflight: Preflight | None = None,
    via_backend: bool = False,
) -> Callable[[ActionFn], ActionFn]:
    """Register ``fn`` as an action. Used by the built-ins and by plugins alike.

    The first parameter receives the ``ActionContext``; the others become the typed parameters a
    policy sets in ``then.params``. ``inverse`` names the action that undoes this one (its params come
    from the ``inverse_params`` of the ``ActionResult``). ``literal`` names parameters a policy must
    write without ``${...}`` templates (checked at ``rules validate``), e.g. the argv of ``command``.
    ``preflight`` checks a policy's params against the targets file (``Preflight``).
    ``via_backend`` says the action acts only through its target's backend (``ActionContext``'s
    target, the backends of ``engine.actions.backends``), so a backend that deduplicates by
    idempotency key makes a repeated call safe (``engine.actions.repeatable``).
    """

    def decorate(fn: ActionFn) -> ActionFn:
        action_name = name or fn.__name__
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise ActionError(f"action {action_name!r} must take the ActionContext as first parameter")
        hints = typing.get_type_hints(fn, include_extras=True)  # Annotated validators too
        fields: dict[str, Any] = {}
        for param in params[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ActionError(
                    f"action {action_name!r}: *args/**kwargs cannot be typed; name each parameter"
                )
            if param.name not in hints:
                raise ActionError(f"action {action_name!r}: parameter {param.name!r} needs a type annotation")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (hints[param.name], default)
        model = create_model(f"{action_name}_params", __config__=ConfigDict(extra="forbid"), **fields)
        doc = description or inspect.getdoc(fn) or ""
        spec = ActionSpec(
            name=action_name,
            fn=fn,
            risk=risk,
            inverse=inverse,
            description=doc.strip().splitlines()[0] if doc.strip() else "",
            module=fn.__module__,
            params_model=model,
            literal=frozenset(literal),
            preflight=preflight,
            via_backend=via_backend,
        )
        if action_name in _REGISTRY and _REGISTRY[action_name].fn is not fn:
            log.warning(
                "action %r from %s replaces the one from %s",
                action_name,
                spec.module,
                _REGISTRY[action_name].module,
            )
        _REGISTRY[action_name] = spec
        return fn

    return decorate


def _load_plugins() -> None:
    """Import the built-ins and every ``selfheal.actions`` entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    load_entry_points(ENTRY_POINT_GROUP, log, BUILTIN_MODULES)


def available_actions() -> dict[str, ActionSpec]:
    """Every registered action by name (built-ins and plugins)."""
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


def get_action(name: str) -> ActionSpec:
    """The action called ``name``, or ActionError with the closest name as hint."""
    _load_plugins()
    if name in _REGISTRY:  # asked on every decision: no sorted copy of the registry
        return _REGISTRY[name]
    actions = available_actions()
    if name not in actions:
        raise ActionError(
            f"unknown action {name!r}",
            hint=did_you_mean(name, actions) or f"registered actions: {', '.join(actions)}",
        )
    return actions[name]


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")
