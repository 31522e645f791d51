"""The ``simulator`` backend, and the admin API contract of the simulated platform.

The simulated platform (``engine.chaos``) serves every service's admin API on one base URL
(default ``http://127.0.0.1:8750``, set per service in the targets file). This module is the
contract that server implements; the actions here are its only client.

Contract (JSON in and out; ``{service}`` is a topology service name, e.g. ``inference-a``):

- ``POST /admin/{service}/restart``, body ``{}``
  -> ``{"ok": true, "restarted_at": ts}``
- ``POST /admin/{service}/scale``, body ``{"replicas": int}`` or ``{"delta": int}``
  -> ``{"ok": true, "previous": int, "replicas": int}``
- ``POST /admin/{service}/shift_traffic``, body ``{"weights": {name: float}}``
  -> ``{"ok": true, "previous": {name: float}, "weights": {name: float}}``
- ``POST /admin/{service}/refresh_index``, body ``{"index": str | null}``
  -> ``{"ok": true, "started_at": ts}``
- ``POST /admin/{service}/rollback_model``, body ``{"version": str | null}``
  -> ``{"ok": true, "previous": str, "version": str}``
- ``GET /admin/{service}/state``
  -> ``{"replicas": int, "weights": {...}, "model_version": str, "faults": [...], ...}``
- ``POST /admin/{service}/faults``, body ``{"kind": str, "params": {...}}``
  -> ``{"ok": true, "fault_id": str}``
- ``DELETE /admin/{service}/faults`` (all) or ``/admin/{service}/faults/{fault_id}``
  -> ``{"ok": true, "cleared": int}``

Rules the server follows:

- Every POST carries an ``Idempotency-Key`` header. A key seen before returns the first response
  again (same status, same body) without applying the change twice; a POST without the header is
  refused with 400.
- ``scale`` with ``{"delta": int}`` instead of ``replicas`` adds to the current count (never below 1).
- ``rollback_model`` with ``version: null`` rolls back to the version deployed before the current one.
- ``refresh_index`` answers at once; the index is rebuilt in the background (precision recovers
  after a delay, in simulated time).
- Fault kinds are the incident kinds of the synthetic platform: ``latency_creep``, ``memory_leak``,
  ``stale_index``, ``bad_deploy``, ``dependency_outage``.
- Unknown service: 404 ``{"error": "..."}``; invalid body: 422 ``{"error": "...", "field": "..."}``.
- When the targets file sets ``token_env``, requests carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from typing import Any

from engine.actions.context import ActionContext
from engine.actions.targets import SimulatorConfig
from engine.actions.transport import request_json


def admin_url(base: str, service: str, op: str) -> str:
    """``{base}/admin/{service}/{op}``: the one place paths of the contract are built."""
    return f"{base.rstrip('/')}/admin/{service}/{op}"


class SimulatorBackend:
    name = "simulator"

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config

    def call(self, op: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return request_json(
            "POST",
            admin_url(self.config.url, ctx.service, op),
            ctx=ctx,
            json_body=params,
            timeout_s=self.config.timeout_s,
            bearer=self.config.bearer(),
            dedup=True,  # the contract above: a key seen before returns the first response again
        )
