"""Shared parts for the engine tests (no tests here): a fitted detector, policies, an admin server,
``selfheal run`` in a subprocess.

Everything is real: a stream detector fitted on synthetic normal telemetry, policies loaded and
compiled into a durable-rules host, actions through the registry's ``http`` backend against a local
HTTP server on 127.0.0.1 that records what it receives. ``build_components`` is also the factory a
subprocess engine loads (``components: tests/test_runtime_support.py:build_components``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

SERVICES = ("inference-a", "vector-db", "feature-store", "gateway")
SPEC = {
    "interval": "1s",
    "metrics": {"latency_p99_ms": {"transforms": ["raw"]}, "memory_util": {"transforms": ["raw"]}},
}
NORMAL = {"latency_p99_ms": (100.0, 5.0), "memory_util": (0.5, 0.02)}
ANOMALY = {"latency_p99_ms": 450.0, "memory_util": 0.97}
TOKEN = "test-token-123"
T0 = 1_700_000_000.0  # in the past: the engine refuses points more than 10 minutes ahead
HERE = Path(__file__).resolve()

TOPOLOGY = """
services:
  vector-db: {replicas: 1, tier: data}
  inference-a: {replicas: 2}
  feature-store: {replicas: 4, tier: data}
  gateway: {replicas: 2, tier: edge, depends_on: [vector-db]}
"""

POLICY = """
policy: platform
version: 7
rules:
  - name: restart-inference
    when:
      services: [inference-a, gateway]
      persistence: {count: 2, of: 3}
    then:
      action: restart
    safeguards: {cooldown: 1h, max_per_hour: 3, blast_radius: 1.0, max_concurrent: 4}
    verify:
      steady_state: {score_below: 0.95}
      deadline: 60s
      on_failure: escalate
      escalate_to: "{admin}/hook"
  - name: rollback-vector-db
    when:
      services: [vector-db]
    then:
      action: rollback_model
    safeguards: {cooldown: 1h, max_concurrent: 4}
    verify:
      steady_state: {score_below: 0.95}
      deadline: 4s
    approval: {ttl: {ttl}, approvers: [alice]}
  - name: scale-feature-store
    when:
      services: [feature-store]
    then:
      action: scale
      params: {delta: 1}
    safeguards: {cooldown: 1h, max_concurrent: 4}
    verify:
      steady_state: {score_below: 0.5}
      deadline: 1s
      on_failure: both
      escalate_to: "{admin}/hook"
"""


def write_rules(folder: Path, admin_url: str, *, approval_ttl: str = "30s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "topology.yaml").write_text(TOPOLOGY)
    (folder / "platform.yaml").write_text(POLICY.replace("{admin}", admin_url).replace("{ttl}", approval_ttl))
    (folder / "targets.yaml").write_text(
        f"defaults:\n  backend: http\n  http: {{url: '{admin_url}/admin', timeout_s: 30}}\n"
    )
    return folder


def fit_pipeline(seed: int = 0) -> Any:
    """The engine's detector for these tests: IForest on the raw values, fitted on normal rows."""
    from engine.detectors.stream_config import StreamConfig
    from engine.testing.detectors import fit_on_rows

    config = StreamConfig.model_validate(
        {
            "groups": [{"name": "default", "features": SPEC}],
            "model": {"class": "IForest", "params": {"n_estimators": 50}},
            "calibration": "ecdf",
            "seed": seed,
        }
    )
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(*NORMAL[m], 2000) for m in SPEC["metrics"]])
    return fit_on_rows(config, X)


def build_components(settings: Any) -> Any:
    """Factory for ``selfheal run`` in a subprocess: rules folder from SELFHEAL_TEST_RULES."""
    from engine.runtime.components import assemble

    return assemble(
        fit_pipeline(), os.environ["SELFHEAL_TEST_RULES"], bundle_version="b-test", detector_version="1"
    )


def points(service: str, t0: float, seconds: int, *, anomalous: bool = False, seed: int = 1) -> list[dict]:
    """Two metrics per second; normal points sit at the training mean (clearly low scores)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(seconds):
        for metric, (mean, sd) in NORMAL.items():
            value = ANOMALY[metric] if anomalous else mean + rng.normal() * sd * 0.1
            out.append({"ts": t0 + k + 0.5, "service": service, "metric": metric, "value": float(value)})
    return out


def ndjson(items: list[dict]) -> bytes:
    return ("\n".join(json.dumps(p) for p in items) + "\n").encode()


class AdminServer:
    """A service admin API on 127.0.0.1 that records every request (path, idempotency key, body).

    ``GET /calls?prefix=/admin/restart`` answers how many requests under that path arrived (for a
    server in another process); ``keep_alive`` speaks HTTP/1.1 so clients reuse connections.
    """

    def __init__(self, delay_s: float = 0.0, *, keep_alive: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner.lock:
                    owner.requests.append(
                        {"path": self.path, "key": self.headers.get("Idempotency-Key"), "body": body}
                    )
                if owner.delay_s and self.path.startswith("/admin"):
                    time.sleep(owner.delay_s)
                self._answer({"ok": True, "previous": 2})

            def do_GET(self) -> None:
                prefix = parse_qs(urlparse(self.path).query).get("prefix", ["/admin"])[0]
                self._answer({"calls": len(owner.calls(prefix))})

            def _answer(self, payload: dict[str, Any]) -> None:
                answer = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # bursts of actions must not be reset by a short listen backlog
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AdminServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, prefix: str = "/admin") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(prefix)]


def wait_for(check: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {getattr(check, '__name__', check)}"
            )
        time.sleep(interval)


def service_points(t0: float, seconds: int, **anomalous: bool) -> Iterator[dict]:
    """Interleaved points of every service, second by second (ts order, as a live feed would be)."""
    for k in range(seconds):
        for service in SERVICES:
            yield from points(
                service, t0 + k, 1, anomalous=anomalous.get(service.replace("-", "_"), False), seed=k
            )


def push_anomaly(url: str, **services: bool) -> None:
    """Three normal seconds of every service, then three with ``services`` (vector_db=True, ...)
    anomalous: enough for a policy without persistence to decide."""
    import httpx

    for t, anomalous in ((0.0, {}), (3.0, services)):
        body = ndjson(list(service_points(T0 + t, 3, **anomalous)))
        assert httpx.post(f"{url}/v1/telemetry", content=body).status_code == 202


@contextlib.contextmanager
def serving(rules: Path, journals: Path, **settings: Any) -> Iterator[Any]:
    """An engine on the fitted pipeline and ``rules``, served from a thread on a free port."""
    from engine.runtime.components import assemble
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine, serve_in_thread

    config = load_settings(overrides={"port": 0, "token": TOKEN, "tick_s": 0.01, **settings}, environ={})
    running = serve_in_thread(build_engine(assemble(fit_pipeline(), rules), config, journals))
    try:
        yield running
    finally:
        running.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """``selfheal run CONFIG`` in a subprocess on a journal of its own, killed and started again.

    The config names the components factory (``components``: a file with ``build_components``,
    this one by default), a free port, the token and the journal; ``config`` adds YAML lines to it.
    The rules folder reaches the factory as SELFHEAL_TEST_RULES; ``env`` adds to the environment.
    The engine's stderr goes to ``log`` (kept across restarts).
    """

    def __init__(
        self,
        tmp: Path,
        rules: Path,
        *,
        config: str = "",
        env: dict[str, str] | None = None,
        components: Path = HERE,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.journal = tmp / "journal.sqlite"
        self.config = tmp / "engine.yaml"
        self.settings = (  # written to ``config`` at each start
            f"components: {components}:build_components\nport: {self.port}\ntoken: {TOKEN}\n"
            f"journal: {self.journal}\n{config}"
        )
        self.env = {
            **os.environ,
            "SELFHEAL_TEST_RULES": str(rules),
            "SELFHEAL_HOME": str(tmp / "home"),
            **(env or {}),
        }
        self.log = tmp / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until ``/readyz`` answers 200; returns the seconds that took."""
        import httpx

        began = time.perf_counter()
        self.config.write_text(self.settings)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "run", str(self.config)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        while time.perf_counter() - began < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"the engine exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - began
            time.sleep(0.02)
        raise AssertionError(f"the engine was not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def kill9(self) -> None:
        self.end(signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM (drain and exit); returns the exit code."""
        return self.end(signal.SIGTERM)

    def end(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text()[-3000:]
