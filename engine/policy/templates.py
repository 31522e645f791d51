"""``${...}`` templates in action parameters, filled from the anomaly event.

Deliberately tiny (no expressions, no code): a template names a field of the event
(``${service}``, ``${score}``, ``${metrics.memory_util}``) or of the target's topology entry
(``${topology.replicas}``). A value that is exactly one template keeps the field's type (so
``replicas: ${topology.replicas}`` stays an int); anything else is string interpolation.
References are checked at load so a typo fails at ``rules validate``, not mid-incident.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from engine.errors import PolicyError
from engine.specs import did_you_mean

_REF = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}")

EVENT_FIELDS: tuple[str, ...] = (
    "service",
    "detector",
    "score",
    "threshold",
    "severity",
    "ts",
    "tick",
    "window_start",
    "window_end",
    "bundle_version",
    "id",
)
TOPOLOGY_FIELDS: tuple[str, ...] = ("replicas", "tier")


def references(value: Any) -> Iterator[str]:
    """Every ``${ref}`` inside a (possibly nested) parameter value."""
    if isinstance(value, str):
        yield from (m.group(1) for m in _REF.finditer(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from references(item)


def is_template(value: Any) -> bool:
    return any(True for _ in references(value))


def check_reference(ref: str, known_metrics: set[str] | None = None) -> str | None:
    """None when ``ref`` can be resolved from an event, else what is wrong (with a hint inside)."""
    head, _, rest = ref.partition(".")
    if head == "metrics":
        if not rest:
            return "'${metrics}' needs a metric name, e.g. ${metrics.memory_util}"
        if known_metrics is not None and rest not in known_metrics:
            hint = did_you_mean(rest, known_metrics)
            return f"unknown metric {rest!r} in ${{{ref}}}" + (f" ({hint})" if hint else "")
        return None
    if head == "topology":
        if rest in TOPOLOGY_FIELDS:
            return None
        hint = did_you_mean(rest, TOPOLOGY_FIELDS)
        return f"unknown topology field {rest!r} in ${{{ref}}}" + (f" ({hint})" if hint else "")
    if ref in EVENT_FIELDS:
        return None
    choices = [*EVENT_FIELDS, "metrics.<name>", "topology.replicas", "topology.tier"]
    hint = did_you_mean(ref, choices)
    return f"unknown template field ${{{ref}}}" + (
        f" ({hint})" if hint else f" (one of {', '.join(choices)})"
    )


def _lookup(ref: str, scope: Mapping[str, Any]) -> Any:
    node: Any = scope
    for part in ref.split("."):
        if not isinstance(node, Mapping) or part not in node or node[part] is None:
            raise PolicyError(
                f"template ${{{ref}}} has no value in this event",
                hint="guard the rule with a `when.metrics` bound on that metric, or drop the template",
            )
        node = node[part]
    return node


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Fill every template in ``value`` from ``scope`` (event fields plus ``topology``)."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:
            return _lookup(whole.group(1), scope)
        return _REF.sub(lambda m: str(_lookup(m.group(1), scope)), value)
    if isinstance(value, Mapping):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, scope) for v in value]
    return value
