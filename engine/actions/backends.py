"""Backends: how an operation reaches a service (``http``, ``kubernetes``, ``simulator``).

A backend exposes one method, ``call(op, params, ctx) -> dict``, for the platform operations the
built-in actions need (``restart``, ``scale``, ``shift_traffic``, ``refresh_index``,
``rollback_model``). Every request carries the ``Idempotency-Key`` header so the engine can retry a
timed-out execution without acting twice. The returned dict may hold ``previous`` (the state before
the change), which actions turn into the params of their inverse.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import httpx

from engine.actions.context import IDEMPOTENCY_HEADER, ActionContext
from engine.actions.targets import HttpConfig, SimulatorConfig, Target
from engine.errors import ActionError

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def call(self, op: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]: ...


def request_json(
    method: str,
    url: str,
    *,
    ctx: ActionContext,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float,
    bearer: str | None = None,
    verify: bool | str = True,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One HTTP request with the idempotency key; non-2xx and transport failures become ActionError."""
    sent = {IDEMPOTENCY_HEADER: ctx.idempotency_key, "Accept": "application/json", **(headers or {})}
    if json_body is not None:
        sent["Content-Type"] = content_type
    if bearer:
        sent["Authorization"] = f"Bearer {bearer}"
    body = json.dumps(json_body).encode() if json_body is not None else None
    try:
        with httpx.Client(timeout=timeout_s, verify=verify) as client:
            response = client.request(method, url, content=body, headers=sent)
    except httpx.HTTPError as exc:
        raise ActionError(
            f"{method} {url} failed: {exc}",
            hint="check the target's URL in the targets file and that the service is reachable; "
            "retrying with the same idempotency key is safe",
        ) from exc
    if response.status_code >= 400:
        raise ActionError(
            f"{method} {url} answered {response.status_code}: {response.text[:300]}",
            hint="see the service's admin API logs; retrying with the same idempotency key is safe",
        )
    log.info("%s %s -> %s", method, url, response.status_code, extra={"idempotency_key": ctx.idempotency_key})
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {"text": response.text}
    return data if isinstance(data, dict) else {"result": data}


class HttpBackend:
    """The service's own admin endpoint: ``POST {url}/{op}`` with the params as the JSON body."""

    name = "http"

    def __init__(self, config: HttpConfig) -> None:
        self.config = config

    def call(self, op: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return request_json(
            "POST",
            f"{self.config.url.rstrip('/')}/{op}",
            ctx=ctx,
            json_body=params,
            headers=self.config.headers,
            timeout_s=self.config.timeout_s,
            bearer=self.config.bearer(),
        )


def make_backend(target: Target) -> Backend:
    """The backend client for a resolved target."""
    if target.backend == "http":
        assert target.http is not None
        return HttpBackend(target.http)
    if target.backend == "simulator":
        from engine.actions.simulator import SimulatorBackend

        return SimulatorBackend(target.simulator or SimulatorConfig())
    if target.backend == "kubernetes":
        from engine.actions.kubernetes import KubernetesBackend

        assert target.kubernetes is not None
        return KubernetesBackend(target.kubernetes)
    raise ActionError(f"unknown backend {target.backend!r} for {target.service}")
