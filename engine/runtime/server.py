"""Running the engine behind HTTP: in the foreground (``selfheal run``) or in a thread (tests, chaos).

SIGTERM/SIGINT: uvicorn stops accepting requests and finishes the ones in flight, then the engine
drains its queue (everything accepted gets scored, decided and journaled), waits for running
actions and closes the journal. Exit code 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RuntimeEngineError
from engine.runtime.components import EngineComponents
from engine.runtime.config import EngineSettings
from engine.runtime.process import Engine

log = logging.getLogger(__name__)


def build_engine(
    components: EngineComponents, settings: EngineSettings, journals_dir: Path, **kw: Any
) -> Engine:
    return Engine(
        components,
        settings,
        journal_path=settings.journal_path(journals_dir),
        dead_letter_path=settings.dead_letter_path(journals_dir),
        **kw,
    )


def _server(engine: Engine, port: int | None = None) -> Any:
    import uvicorn

    from engine.runtime.api import create_app
    from engine.runtime.console.pages import add_console

    class _DrainingServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its own shutdown, which would kill us before the drain;
        here a signal only asks the server to stop, and ``serve`` drains and returns normally."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            log.info("signal %d: stopping intake, draining accepted points", sig)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    app = create_app(engine)
    add_console(app, engine)
    config = uvicorn.Config(
        app,
        host=engine.settings.host,
        port=engine.settings.port if port is None else port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(engine.settings.drain_timeout_s)),
    )
    return _DrainingServer(config)


SWITCH_INTERVAL_S = 0.001


def tune_for_serving() -> None:
    """Settings for a process that does nothing but run one engine (``selfheal run``, the benchmark).

    - The GIL switch interval drops from 5 ms to 1 ms: the HTTP, scoring and actuator threads hand
      over sooner, which bounds how long a ready dispatch waits.
    - ``gc.freeze()`` once everything is loaded: the cyclic collector's full passes otherwise walk
      every object of the pipeline, the policies and the libraries, stopping all threads for
      120-160 ms each (measured: 11 such pauses in a 30 s benchmark soak, which set the p99 of
      anomaly-to-dispatch). Frozen objects are never collected, so this is for dedicated
      processes only, after start-up, not for a test process that starts many engines.
    """
    import gc
    import sys

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def listen(settings: EngineSettings) -> socket.socket:
    """Bind the engine's address first: a busy port must fail before the journal exists, so that a
    start that cannot listen leaves nothing behind (and recovery rewrites nothing)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise RuntimeEngineError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            hint="another engine (or program) holds the port: stop it, or pass --port / set `port` "
            "in the engine config",
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(engine: Engine, sock: socket.socket) -> None:
    """Foreground on ``sock`` (from ``listen``): start the engine, serve until SIGTERM/SIGINT, drain, stop."""
    engine.settings.require_safe_binding("engine config")
    server = _server(engine)
    try:
        engine.start()
    except BaseException:
        sock.close()
        raise
    tune_for_serving()
    host, port = sock.getsockname()[:2]
    log.info("selfheal engine listening on http://%s:%d", host, port)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop(drain=True)


@dataclass
class RunningEngine:
    """An engine served from a background thread; ``url`` is where it listens."""

    engine: Engine
    url: str
    _server: Any
    _thread: threading.Thread

    def stop(self, *, drain: bool = True) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.engine.stop(drain=drain)


def serve_in_thread(
    engine: Engine, *, start_engine: bool = True, start_timeout_s: float = 10.0
) -> RunningEngine:
    """Serve the engine's API from a thread in this process; port 0 picks a free port.

    ``start_engine=False`` serves the API of an engine that does not score yet (tests of
    back-pressure call ``engine.start()`` themselves).
    """
    engine.settings.require_safe_binding("engine config")
    server = _server(engine)
    if start_engine:
        engine.start()
    thread = threading.Thread(target=server.run, name="selfheal-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            engine.stop(drain=False)
            raise RuntimeEngineError("the engine's HTTP server did not start", hint="is the port free?")
        time.sleep(0.01)
    sock = server.servers[0].sockets[0]
    host, port = sock.getsockname()[:2]
    return RunningEngine(engine, f"http://{host}:{port}", server, thread)
