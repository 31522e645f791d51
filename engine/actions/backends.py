"""Backends: how an operation reaches a service (``http``, ``kubernetes``, ``simulator``).

A backend exposes one method, ``call(op, params, ctx) -> dict``, for the platform operations the
built-in actions need (``restart``, ``scale``, ``shift_traffic``, ``refresh_index``,
``rollback_model``). The returned dict may hold ``previous`` (the state before the change), which
actions turn into the params of their inverse.

Every request carries the ``Idempotency-Key`` header. A retry with the same key is safe only where
the far side deduplicates: the simulator honours the header; the kubernetes backend records the key
in an annotation on the Deployment and checks it before acting; a plain ``http`` admin endpoint is
trusted only if the targets file says so (``http.dedup: true``). Error hints say which case applies.
"""

from __future__ import annotations

from engine.actions.kubernetes import KubernetesBackend
from engine.actions.simulator import SimulatorBackend
from engine.actions.targets import SimulatorConfig, Target
from engine.actions.transport import Backend, HttpBackend
from engine.errors import ActionError


def make_backend(target: Target) -> Backend:
    """The backend client for a resolved target."""
    if target.backend == "http":
        assert target.http is not None
        return HttpBackend(target.http)
    if target.backend == "simulator":
        return SimulatorBackend(target.simulator or SimulatorConfig())
    if target.backend == "kubernetes":
        assert target.kubernetes is not None
        return KubernetesBackend(target.kubernetes)
    raise ActionError(f"unknown backend {target.backend!r} for {target.service}")
