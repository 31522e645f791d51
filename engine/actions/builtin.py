"""The built-in actions. They register through ``register_action`` exactly as a plugin would.

Platform actions (restart, scale, shift_traffic, refresh_index, rollback_model) hand the operation
to the target's backend; ``webhook`` and ``command`` act on their own. Each returns an
``ActionResult`` whose ``inverse_params`` feed the declared inverse (scale back, shift back, roll
forward) when verification fails and the policy says ``rollback``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator

from engine.actions.backends import make_backend
from engine.actions.context import ActionContext, ActionResult
from engine.actions.registry import register_action
from engine.actions.transport import request_json
from engine.errors import ActionError

if TYPE_CHECKING:
    from engine.actions.targets import TargetsConfig


def _platform(
    ctx: ActionContext, op: str, params: dict[str, Any], inverse_key: str | None = None
) -> ActionResult:
    backend = make_backend(ctx.target)
    detail = backend.call(op, params, ctx)
    inverse = None
    if inverse_key and detail.get("previous") is not None:
        inverse = {inverse_key: detail["previous"]}
    return ActionResult(op, ctx.service, backend.name, ctx.idempotency_key, detail, inverse)


@register_action(risk="medium", via_backend=True)
def restart(ctx: ActionContext) -> ActionResult:
    """Rollout restart of the service: fresh pods, same spec (clears leaks, not bad data)."""
    return _platform(ctx, "restart", {})


@register_action(risk="low", inverse="scale", via_backend=True)
def scale(ctx: ActionContext, replicas: int | None = None, delta: int | None = None) -> ActionResult:
    """Set the replica count (``replicas``) or change it by ``delta``; inverse: scale back."""
    if (replicas is None) == (delta is None):
        raise ActionError("scale needs exactly one of replicas or delta", hint="e.g. params: {delta: 1}")
    if replicas is not None and replicas < 1:
        raise ActionError(
            f"scale to {replicas} replicas would stop the service", hint="replicas must be >= 1"
        )
    params = {"replicas": replicas} if replicas is not None else {"delta": delta}
    return _platform(ctx, "scale", params, "replicas")


@register_action(risk="medium", inverse="shift_traffic", via_backend=True)
def shift_traffic(ctx: ActionContext, weights: dict[str, float]) -> ActionResult:
    """Set traffic weights between replicas or versions (e.g. {blue: 0, green: 1}); inverse: shift back."""
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ActionError(
            f"invalid traffic weights {weights}", hint="weights are >= 0 and sum to more than 0"
        )
    return _platform(ctx, "shift_traffic", {"weights": weights}, "weights")


@register_action(risk="low", via_backend=True)
def refresh_index(ctx: ActionContext, index: str | None = None) -> ActionResult:
    """Rebuild the service's vector index (stale retrieval); recovery follows after the rebuild."""
    return _platform(ctx, "refresh_index", {"index": index})


@register_action(risk="high", inverse="rollback_model", via_backend=True)
def rollback_model(ctx: ActionContext, version: str | None = None) -> ActionResult:
    """Serve another model version (default: the previous one); inverse: roll forward again."""
    return _platform(ctx, "rollback_model", {"version": version}, "version")


@register_action(risk="low")
def webhook(
    ctx: ActionContext, url: str, payload: dict[str, Any] | None = None, timeout_s: float = 5.0
) -> ActionResult:
    """POST a JSON payload (paging, chat, ticketing) with the idempotency key as a header."""
    if not url.startswith(("http://", "https://")):
        raise ActionError(
            f"webhook url {url!r} is not http(s)", hint="write the full URL, e.g. https://hooks.example/x"
        )
    body = {"service": ctx.service, **(payload or {})}
    detail = request_json("POST", url, ctx=ctx, json_body=body, timeout_s=timeout_s)
    return ActionResult("webhook", ctx.service, "http", ctx.idempotency_key, detail)


#: Inherited SELFHEAL_* variables whose names contain one of these are secrets and are not passed on.
SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY", "AUTH")


def command_env(ctx: ActionContext, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a ``command`` child gets: PATH, LANG and non-secret SELFHEAL_* only.

    The engine's own environment holds bearer tokens (``token_env`` of every target, the API
    token); a child inherits none of them. It learns what to act on from ``SELFHEAL_TARGET`` and
    ``SELFHEAL_IDEMPOTENCY_KEY``.
    """
    source = os.environ if environ is None else environ
    secret_names = ctx.settings.token_env_names()
    env = {
        name: value
        for name, value in source.items()
        if name.startswith("SELFHEAL_")
        and name not in secret_names
        and not any(marker in name.upper() for marker in SECRET_MARKERS)
    }
    env["PATH"] = source.get("PATH", os.defpath)
    env["LANG"] = source.get("LANG", "C.UTF-8")
    env["SELFHEAL_IDEMPOTENCY_KEY"] = ctx.idempotency_key
    env["SELFHEAL_TARGET"] = ctx.service
    return env


def _program_first(argv: list[str]) -> list[str]:
    """A bare name would be looked up on PATH at run time: whoever controls PATH picks the program."""
    if not argv:
        raise ValueError("argv is empty; start it with the program's full path, e.g. [/usr/local/bin/x]")
    if not os.path.isabs(argv[0]):
        raise ValueError(
            f"{argv[0][:80]!r} is not an absolute path; write the full path of the program, e.g. "
            "/usr/local/bin/flush-cache, as listed in commands.allow"
        )
    return argv


Argv = Annotated[list[str], AfterValidator(_program_first)]
"""A program's argv: never a shell string, the program first, by absolute path (checked at validate)."""


def _not_allowed(argv: list[str], allowed: list[str]) -> str | None:
    if argv[0] in allowed:
        return None
    return f"{argv[0][:80]!r} is not in commands.allow (allowed: {', '.join(allowed) or 'none'})"


def _command_preflight(params: Mapping[str, Any], targets: TargetsConfig) -> list[tuple[str, str]]:
    """At ``rules validate``: the program must be allowlisted in the targets file the engine will use."""
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str) or not os.path.isabs(argv[0]):
        return []  # the parameter's own type check reports it
    problem = _not_allowed(argv, targets.commands.allow)
    return [("argv", problem)] if problem else []


@register_action(risk="medium", literal=("argv",), preflight=_command_preflight)
def command(ctx: ActionContext, argv: Argv, timeout_s: float = 30.0) -> ActionResult:
    """Run an argv (never a shell string) whose program is in the targets file's commands.allow.

    ``argv`` is literal (no ``${...}`` templates, refused at ``rules validate``) and ``argv[0]`` an
    absolute path listed in ``commands.allow`` (both checked at ``rules validate`` against the
    targets file, and here again against the one the engine runs with); the child runs with
    ``command_env`` only.
    """
    problem = _not_allowed(argv, ctx.settings.commands.allow)
    if problem:
        raise ActionError(f"command {problem}", hint="add it to commands.allow in the targets file")
    try:
        proc = subprocess.run(
            argv,
            shell=False,
            capture_output=True,
            text=True,
            timeout=ctx.limit(timeout_s),
            env=command_env(ctx),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ActionError(f"command {argv[0]!r} failed to run: {exc}") from exc
    detail = {"returncode": proc.returncode, "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}
    if proc.returncode != 0:
        raise ActionError(f"command {argv[0]!r} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return ActionResult("command", ctx.service, "local", ctx.idempotency_key, detail)
