"""HTTP face of the simulated platform: Prometheus ``/metrics`` and the admin API contract.

One server on 127.0.0.1 serves every service (all admin paths under one base URL):
``/admin/{service}/...`` for operations and faults, ``/services/{service}/metrics`` for one
service's Prometheus exposition, ``/metrics`` for all of them (label ``service``), ``/platform``
for the whole state and ``/healthz``. The engine's ``simulator`` actions
(``engine.actions.simulator``) are the client of the admin API.

Why the standard library server: it starts in milliseconds inside a test, needs no event loop in
the caller's thread, and the admin API is a handful of JSON routes. Samples carry the platform's
timestamp (milliseconds), so a scraper keeps platform time however fast the clock runs.

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

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from engine.simulation.live import PlatformError, SimulatedPlatform

log = logging.getLogger(__name__)

METRIC_PREFIX = "sim_"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def exposition(platform: SimulatedPlatform, service: str | None = None) -> str:
    """Prometheus text format (0.0.4) of the latest tick, one gauge per metric, label ``service``."""
    by_metric: dict[str, list[tuple[str, float, float]]] = {}
    for (svc, metric), (value, ts) in sorted(platform.latest.items()):
        if service is None or svc == service:
            by_metric.setdefault(metric, []).append((svc, value, ts))
    lines: list[str] = []
    for metric, samples in by_metric.items():
        name = METRIC_PREFIX + metric
        lines.append(f"# HELP {name} simulated platform: {metric}")
        lines.append(f"# TYPE {name} gauge")
        for svc, value, ts in samples:
            lines.append(f'{name}{{service="{svc}"}} {value!r} {round(ts * 1000)}')
    return "\n".join(lines) + "\n"


class PlatformServer:
    """The platform served from a daemon thread. ``port=0`` picks a free port (see ``url``)."""

    def __init__(
        self, platform: SimulatedPlatform, host: str = "127.0.0.1", port: int = 8750, token: str | None = None
    ) -> None:
        self.platform = platform
        self.token = token
        self._responses: dict[str, tuple[int, dict[str, Any]]] = {}
        self._keys_lock = threading.Lock()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="chaos-platform", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> PlatformServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PlatformServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def once(self, key: str, apply: Any) -> tuple[int, dict[str, Any]]:
        """Apply a POST once per idempotency key; a repeated key gets the first answer again."""
        with self._keys_lock:
            if key in self._responses:
                return self._responses[key]
            status, body = apply()
            self._responses[key] = (status, body)
            return status, body


def _make_handler(server: PlatformServer) -> type[BaseHTTPRequestHandler]:
    platform = server.platform

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if not server.token:
                return True
            scheme, _, given = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), server.token.encode()):
                return True
            self._send(401, {"error": "missing or invalid bearer token"})
            return False

        def _parts(self) -> list[str]:
            return [unquote(p) for p in self.path.split("?", 1)[0].strip("/").split("/") if p]

        def do_GET(self) -> None:
            parts = self._parts()
            try:
                if parts == ["healthz"]:
                    self._send(200, {"status": "ok", "time": platform.clock.now()})
                elif parts == ["metrics"]:
                    self._send(200, exposition(platform), "text/plain; version=0.0.4")
                elif len(parts) == 3 and parts[0] == "services" and parts[2] == "metrics":
                    platform.service(parts[1])
                    self._send(200, exposition(platform, parts[1]), "text/plain; version=0.0.4")
                elif parts == ["platform"]:
                    self._send(200, platform.snapshot())
                elif len(parts) == 3 and parts[0] == "admin" and parts[2] == "state":
                    if self._authorised():
                        self._send(200, platform.state(parts[1]))
                else:
                    self._send(404, {"error": f"no route GET {self.path}"})
            except PlatformError as exc:
                self._send(exc.status, _error(exc))

        def do_POST(self) -> None:
            parts = self._parts()
            if len(parts) != 3 or parts[0] != "admin":
                self._send(404, {"error": f"no route POST {self.path}"})
                return
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            key = self.headers.get(IDEMPOTENCY_HEADER)
            if not key:
                self._send(400, {"error": f"the {IDEMPOTENCY_HEADER} header is required", "field": "header"})
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                self._send(422, {"error": f"body is not JSON: {exc}", "field": "body"})
                return
            if not isinstance(body, dict):
                self._send(422, {"error": "body must be a JSON object", "field": "body"})
                return
            _, service, op = parts

            def apply() -> tuple[int, dict[str, Any]]:
                try:
                    return 200, platform.admin(service, op, body, key)
                except PlatformError as exc:
                    return exc.status, _error(exc)

            self._send(*server.once(f"{service}:{op}:{key}", apply))

        def do_DELETE(self) -> None:
            parts = self._parts()
            if len(parts) not in (3, 4) or parts[0] != "admin" or parts[2] != "faults":
                self._send(404, {"error": f"no route DELETE {self.path}"})
                return
            if not self._authorised():
                return
            try:
                n = platform.clear_faults(parts[1], parts[3] if len(parts) == 4 else None)
            except PlatformError as exc:
                self._send(exc.status, _error(exc))
                return
            self._send(200, {"ok": True, "cleared": n})

    return Handler


def _error(exc: PlatformError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.message}
    if exc.field:
        out["field"] = exc.field
    if exc.hint:
        out["hint"] = exc.hint
    return out
