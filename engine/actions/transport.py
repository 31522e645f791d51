"""How backends reach a service over HTTP: the ``Backend`` protocol, one pooled client per TLS
setting, ``request_json`` (idempotency key, errors that say whether a retry is safe) and the ``http``
backend itself. ``engine.actions.backends`` picks the backend of a target.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

import httpx

from engine.actions.context import IDEMPOTENCY_HEADER, ActionContext
from engine.actions.targets import HttpConfig
from engine.errors import ActionError

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def call(self, op: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]: ...


class HttpStatusError(ActionError):
    """The far side answered an HTTP error; ``status_code`` lets a backend react (409 = conflict)."""

    def __init__(self, message: str, *, status_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code


#: Statuses after which the same request may succeed later (the rest are refusals: fix, do not retry).
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _retry_hint(dedup: bool) -> str:
    if dedup:
        return "retrying with the same idempotency key is safe (the change is applied at most once)"
    return (
        "this endpoint is not known to deduplicate by Idempotency-Key: check whether the change "
        "was applied before retrying"
    )


_clients: dict[bool | str, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client(verify: bool | str) -> httpx.Client:
    """One pooled client per TLS setting, shared by every action of the process.

    Why: a new ``httpx.Client`` builds an SSL context (it parses the CA bundle: ~10 ms of CPU under
    the GIL) and a new connection for every call; at tens of actions per second that CPU delayed
    every other engine thread. ``httpx.Client`` is thread-safe; timeouts are set per request. The
    lock: the first burst of actions would otherwise build one context per actuator thread.
    """
    client = _clients.get(verify)
    if client is None:
        with _clients_lock:
            client = _clients.get(verify)
            if client is None:
                client = _clients[verify] = httpx.Client(verify=verify)
    return client


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
    dedup: bool = False,
) -> dict[str, Any]:
    """One HTTP request with the idempotency key; non-2xx and transport failures become ActionError.

    ``dedup`` says whether a retry of this request with the same idempotency key is known to apply
    the change at most once (the simulator honours the header; the kubernetes backend checks its own
    annotation). It only decides the hint: telling an operator "retrying is safe" when it is not
    is how a service gets scaled twice.
    """
    sent = {IDEMPOTENCY_HEADER: ctx.idempotency_key, "Accept": "application/json", **(headers or {})}
    if json_body is not None:
        sent["Content-Type"] = content_type
    if bearer:
        sent["Authorization"] = f"Bearer {bearer}"
    body = json.dumps(json_body).encode() if json_body is not None else None
    try:
        response = _client(verify).request(
            method, url, content=body, headers=sent, timeout=ctx.limit(timeout_s)
        )
    except httpx.HTTPError as exc:
        raise ActionError(
            f"{method} {url} failed: {exc}",
            hint="check the target's URL in the targets file and that the service is reachable; "
            + _retry_hint(dedup or method == "GET"),
        ) from exc
    if response.status_code >= 400:
        transient = response.status_code in TRANSIENT_STATUSES
        raise HttpStatusError(
            f"{method} {url} answered {response.status_code}: {response.text[:300]}",
            status_code=response.status_code,
            hint="see the service's admin API logs; "
            + (
                _retry_hint(dedup or method == "GET")
                if transient
                else "the request was refused: retrying it unchanged will not help"
            ),
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
            dedup=self.config.dedup,
        )
