"""The ``kubernetes`` backend: the exact API requests ``kubectl`` would send, without kubectl.

- restart (``kubectl rollout restart``): ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}``
  with ``Content-Type: application/strategic-merge-patch+json`` and the body
  ``{"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": T}}}}}``.
  ``T`` is the decision time, not the call time, so a retry with the same idempotency key sends the
  same patch and does not roll the pods a second time.
- scale (``kubectl scale``): ``GET .../deployments/{name}/scale`` (the previous count, for the
  inverse), then ``PATCH .../deployments/{name}/scale`` with ``application/merge-patch+json`` and
  ``{"spec": {"replicas": N}}``.
- rollback_model: ``GET .../deployments/{name}`` (previous version, for the inverse), then a
  strategic-merge ``PATCH`` of the pod template: the model-version annotation and, when the target
  names a container and image, that container's image ``{image}:{version}``.

Every request carries ``Idempotency-Key`` and, when ``token_env`` is set, ``Authorization: Bearer``.
``shift_traffic`` and ``refresh_index`` have no Deployment equivalent and are refused.
"""

from __future__ import annotations

from typing import Any

from engine.actions.backends import request_json
from engine.actions.context import ActionContext
from engine.actions.targets import KubernetesConfig
from engine.errors import ActionError

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, config: KubernetesConfig) -> None:
        self.config = config

    def _deployment_url(self, ctx: ActionContext, sub: str = "") -> str:
        name = self.config.deployment or ctx.service
        base = self.config.api.rstrip("/")
        return f"{base}/apis/apps/v1/namespaces/{self.config.namespace}/deployments/{name}{sub}"

    def _send(self, method: str, url: str, ctx: ActionContext, body: Any = None, ctype: str = MERGE) -> dict:
        return request_json(
            method,
            url,
            ctx=ctx,
            json_body=body,
            timeout_s=self.config.timeout_s,
            bearer=self.config.bearer(),
            verify=self.config.verify_tls,
            content_type=ctype,
        )

    def call(self, op: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        if op == "restart":
            return self.restart(ctx)
        if op == "scale":
            return self.scale(ctx, params.get("replicas"), params.get("delta"))
        if op == "rollback_model":
            return self.rollback_model(ctx, params.get("version"))
        raise ActionError(
            f"the kubernetes backend cannot {op} (service {ctx.service})",
            hint="use the http or simulator backend for this service in the targets file",
        )

    def restart(self, ctx: ActionContext) -> dict[str, Any]:
        stamp = ctx.requested_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        self._send("PATCH", self._deployment_url(ctx), ctx, body, STRATEGIC)
        return {"restarted_at": stamp}

    def scale(self, ctx: ActionContext, replicas: int | None, delta: int | None) -> dict[str, Any]:
        current = self._send("GET", self._deployment_url(ctx, "/scale"), ctx)
        previous = int(current.get("spec", {}).get("replicas", 0))
        wanted = replicas if replicas is not None else max(1, previous + int(delta or 0))
        self._send("PATCH", self._deployment_url(ctx, "/scale"), ctx, {"spec": {"replicas": wanted}}, MERGE)
        return {"previous": previous, "replicas": wanted}

    def rollback_model(self, ctx: ActionContext, version: str | None) -> dict[str, Any]:
        if not version:
            raise ActionError(
                f"rollback_model on kubernetes needs an explicit version (service {ctx.service})",
                hint="set then.params.version in the policy",
            )
        current = self._send("GET", self._deployment_url(ctx), ctx)
        template = current.get("spec", {}).get("template", {})
        previous = template.get("metadata", {}).get("annotations", {}).get(self.config.model_annotation)
        patch: dict[str, Any] = {"metadata": {"annotations": {self.config.model_annotation: version}}}
        if self.config.container and self.config.image:
            patch["spec"] = {
                "containers": [{"name": self.config.container, "image": f"{self.config.image}:{version}"}]
            }
        self._send("PATCH", self._deployment_url(ctx), ctx, {"spec": {"template": patch}}, STRATEGIC)
        return {"previous": previous, "version": version}
