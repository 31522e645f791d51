"""The ``kubernetes`` backend: the exact API requests ``kubectl`` would send, without kubectl.

- restart (``kubectl rollout restart``): ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}``
  with ``Content-Type: application/strategic-merge-patch+json`` and the body
  ``{"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": T}}}}}``.
  ``T`` is the decision time, not the call time, so a retry with the same idempotency key sends the
  same patch and does not roll the pods a second time.
- scale: ``GET .../deployments/{name}``, then one ``PATCH`` of that Deployment
  (``application/merge-patch+json``) setting ``spec.replicas`` to an absolute count and recording the
  operation in annotations (below). ``delta`` is resolved to that absolute count once, against the
  GET; the patch never carries a delta.
- rollback_model: ``GET .../deployments/{name}``, then one strategic-merge ``PATCH`` of the pod
  template (the model-version annotation and, when the target names a container and image, that
  container's image ``{image}:{version}``) plus the same bookkeeping annotations.

Why annotations: the API server ignores ``Idempotency-Key``, so a retry of "scale by +1" after a
timeout whose PATCH did land would scale again (4 -> 5 -> 6) and record 5 as ``previous``, turning a
rollback after a failed verification into a no-op. Each scale/rollback PATCH therefore writes, in the
same atomic update as the change itself, ``selfheal.io/idempotency-key`` (the key),
``selfheal.io/operation``, ``selfheal.io/previous`` and ``selfheal.io/target`` (JSON values). A call
first GETs the Deployment: when the key and operation are already there, the change was applied and
the recorded result is returned without a second PATCH. The PATCH carries
``metadata.resourceVersion`` from that GET as a precondition, so a concurrent writer (an HPA, a
human, a parallel retry) makes it fail with 409 instead of being overwritten; on 409 the call reads
again (and returns the recorded result if the parallel attempt was ours) up to ``CONFLICT_RETRIES``
times.

Every request carries ``Idempotency-Key`` and, when ``token_env`` is set, ``Authorization: Bearer``.
``shift_traffic`` and ``refresh_index`` have no Deployment equivalent and are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from engine.actions.context import ActionContext
from engine.actions.targets import KubernetesConfig
from engine.actions.transport import HttpStatusError, request_json
from engine.errors import ActionError

log = logging.getLogger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
KEY_ANNOTATION = "selfheal.io/idempotency-key"
OP_ANNOTATION = "selfheal.io/operation"
PREVIOUS_ANNOTATION = "selfheal.io/previous"
TARGET_ANNOTATION = "selfheal.io/target"
CONFLICT_RETRIES = 3


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
            dedup=True,  # restart is a fixed patch; scale and rollback check the key annotation
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
        def plan(deployment: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
            previous = int(deployment.get("spec", {}).get("replicas", 0))
            wanted = replicas if replicas is not None else max(1, previous + int(delta or 0))
            return previous, wanted, {"spec": {"replicas": wanted}}

        previous, wanted, replayed = self._apply_once(ctx, "scale", plan, MERGE)
        return {"previous": previous, "replicas": wanted, **({"replayed": True} if replayed else {})}

    def rollback_model(self, ctx: ActionContext, version: str | None) -> dict[str, Any]:
        if not version:
            raise ActionError(
                f"rollback_model on kubernetes needs an explicit version (service {ctx.service})",
                hint="set then.params.version in the policy",
            )

        def plan(deployment: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
            template = deployment.get("spec", {}).get("template", {})
            previous = template.get("metadata", {}).get("annotations", {}).get(self.config.model_annotation)
            patch: dict[str, Any] = {"metadata": {"annotations": {self.config.model_annotation: version}}}
            if self.config.container and self.config.image:
                patch["spec"] = {
                    "containers": [{"name": self.config.container, "image": f"{self.config.image}:{version}"}]
                }
            return previous, version, {"spec": {"template": patch}}

        previous, wanted, replayed = self._apply_once(ctx, "rollback_model", plan, STRATEGIC)
        return {"previous": previous, "version": wanted, **({"replayed": True} if replayed else {})}

    def _apply_once(
        self,
        ctx: ActionContext,
        op: str,
        plan: Callable[[dict[str, Any]], tuple[Any, Any, dict[str, Any]]],
        ctype: str,
    ) -> tuple[Any, Any, bool]:
        """(previous, target, replayed): apply ``op`` at most once per idempotency key.

        ``plan`` turns the Deployment as read into (previous, target, patch body); the body is sent
        with the bookkeeping annotations and the resourceVersion precondition.
        """
        url = self._deployment_url(ctx)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            deployment = self._send("GET", url, ctx)
            meta = deployment.get("metadata", {})
            notes = meta.get("annotations") or {}
            if notes.get(KEY_ANNOTATION) == ctx.idempotency_key and notes.get(OP_ANNOTATION) == op:
                log.info(
                    "%s on %s already applied with this key; returning the recorded result",
                    op,
                    ctx.service,
                    extra={"idempotency_key": ctx.idempotency_key},
                )
                return _loads(notes.get(PREVIOUS_ANNOTATION)), _loads(notes.get(TARGET_ANNOTATION)), True
            previous, target, body = plan(deployment)
            body["metadata"] = {
                **({"resourceVersion": meta["resourceVersion"]} if meta.get("resourceVersion") else {}),
                "annotations": {
                    KEY_ANNOTATION: ctx.idempotency_key,
                    OP_ANNOTATION: op,
                    PREVIOUS_ANNOTATION: json.dumps(previous),
                    TARGET_ANNOTATION: json.dumps(target),
                },
            }
            try:
                self._send("PATCH", url, ctx, body, ctype)
            except HttpStatusError as exc:
                if exc.status_code != 409 or attempt == CONFLICT_RETRIES:
                    raise
                log.info("%s on %s: conflict (attempt %d), reading again", op, ctx.service, attempt)
                continue
            return previous, target, False
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text
