"""The ``simulator`` backend: the engine's actions against the simulated platform's admin API.

The simulated platform (``engine.simulation``) serves every service's admin API on one base URL
(default ``http://127.0.0.1:8750``, set per service in the targets file). The contract (paths,
bodies, idempotency, errors) is written down once, beside the server that implements it, in
``engine.simulation.server``; this backend is its client, like the Kubernetes backend is a
client of the Kubernetes API.
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
