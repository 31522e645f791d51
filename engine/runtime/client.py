"""The operator side of the HTTP API: what ``selfheal pause|resume|approvals`` call.

Why over HTTP rather than writing the journal: approvals and the kill switch are authenticated by
the engine's token and applied by the running engine at once, and the approver recorded is the
identity bound to the token, by the engine that checked it (a client cannot name someone else).
Reads (``selfheal journal``) go straight to the journal file.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from engine.errors import RuntimeEngineError

TOKEN_ENV = "SELFHEAL_ENGINE_TOKEN"
URL_ENV = "SELFHEAL_ENGINE_URL"
DEFAULT_URL = "http://127.0.0.1:8787"


class EngineClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = httpx.request(
                method, self.url + path, json=body, headers=headers, timeout=self.timeout_s
            )
        except httpx.ConnectError as exc:
            raise EngineUnreachable(
                f"no engine answers at {self.url} ({exc})",
                hint=f"start it with `selfheal run`, or pass --url / {URL_ENV}",
            ) from exc
        except httpx.HTTPError as exc:
            raise RuntimeEngineError(f"{method} {self.url}{path} failed: {exc}") from exc
        if response.status_code == 401:
            raise RuntimeEngineError(
                f"the engine at {self.url} refused the request: {_detail(response)}",
                hint=f"pass --token or set {TOKEN_ENV} to the engine's token",
            )
        if response.status_code >= 400:
            raise RuntimeEngineError(f"{_detail(response)} (HTTP {response.status_code})")
        return response.json()

    def pause(self, reason: str | None) -> Any:
        return self._call("POST", "/v1/pause", {"reason": reason})

    def resume(self, reason: str | None) -> Any:
        return self._call("POST", "/v1/resume", {"reason": reason})

    def approvals(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/approvals"))

    def approve(self, approval_id: str, reason: str | None) -> Any:
        return self._call("POST", f"/v1/approvals/{approval_id}/approve", {"reason": reason})

    def reject(self, approval_id: str, reason: str | None) -> Any:
        return self._call("POST", f"/v1/approvals/{approval_id}/reject", {"reason": reason})

    def label(self, event_id: str, label: str, reason: str | None) -> Any:
        return self._call("POST", f"/v1/events/{event_id}/label", {"label": label, "reason": reason})


class EngineUnreachable(RuntimeEngineError):
    """Nothing listens at the engine URL."""


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)
