"""Console clients on the live stream against the engine's anomaly → dispatch latency.

One engine (this process) under the engine benchmark's load (``bench_engine``: 204 series pushed by
a generator process at a fixed rate, anomaly bursts all along, every one a restart dispatched to a
target in a third process). The run alternates windows with no console client and windows with
``CLIENTS`` clients on ``GET /live`` (a fourth process holding the server-sent-event streams, as
browsers would; every action run and verified is a note they all hear). Per window: anomaly event
→ action dispatch p99 and p50 from the engine's own latency record. The table gives the median
over windows of each, and the ratio; the machine's load (``uptime``) is printed before and after.

Why it should not matter: the journal writer dispatches a commit's actions before its listeners
(the console's hub among them) hear the commit's notes, and the hub hands one note per event loop
to the server, not one per client.

Run: ``.venv/bin/python tests/benchmarks/run.py --repeats 4 fanout`` (windows per condition;
``SELFHEAL_BENCH_FANOUT_RATE`` points/s offered, default 40,000; ``SELFHEAL_BENCH_WINDOW_S``,
default 15).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_engine import T0, _Admin, _build, _generator, _pipeline  # noqa: E402
from harness import Row  # noqa: E402

CLIENTS = 50
RATE = float(os.environ.get("SELFHEAL_BENCH_FANOUT_RATE", "40000"))
WARMUP_S = 10.0  # past the features' warm-up at the offered rate


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------------------------ the clients


async def _listen(url: str, n: int, received: list[int]) -> None:
    import httpx

    async def one(k: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"{url}/live") as r:
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    received[k] += 1

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=n)) as client:
        await asyncio.gather(*(one(k, client) for k in range(n)))


def _clients_main(url: str, n: int) -> None:
    """``n`` event streams in one process until stdin closes; then prints what each received."""
    received = [0] * n
    threading.Thread(target=lambda: asyncio.run(_listen(url, n, received)), daemon=True).start()
    sys.stdin.read()
    print(json.dumps({"received": received}), flush=True)


class _Clients:
    def __init__(self, url: str, n: int, hub: Any) -> None:
        self.url, self.n, self.hub = url, n, hub

    def __enter__(self) -> _Clients:
        args = [sys.executable, __file__, "--clients", self.url, str(self.n)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while self.hub.clients < self.n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.hub.clients}/{self.n} console clients connected after 60 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(input="", timeout=60)
        self.received = json.loads(out.strip().splitlines()[-1])["received"]
        deadline = time.monotonic() + 30
        while self.hub.clients and time.monotonic() < deadline:  # noticed at the next note
            time.sleep(0.05)


# ------------------------------------------------------------------------------------ the run


def _window(engine: Any, seconds: float) -> list[float]:
    """Anomaly → dispatch latencies (ms) of the dispatches made in the next ``seconds``."""
    samples = engine.latencies["event_to_dispatch"]
    samples.clear()
    time.sleep(seconds)
    return [x * 1000 for x in list(samples)]


def bench_fanout(repeats: int) -> list[Row]:
    from engine.runtime.server import serve_in_thread, tune_for_serving

    window = float(os.environ.get("SELFHEAL_BENCH_WINDOW_S", "15"))
    print(f"load before: {_uptime()}", flush=True)
    pipeline, _ = _pipeline()
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-fanout-"))
    alone: list[list[float]] = []
    watched: list[list[float]] = []
    received: list[int] = []
    with _Admin() as admin:
        engine = _build(pipeline, tmp, admin.url)
        server = serve_in_thread(engine)
        tune_for_serving()
        hub = server._server.config.app.state.console_hub
        try:
            gen = _generator(server.url, 3600.0, RATE, T0)  # killed after the last window
            time.sleep(WARMUP_S)
            for k in range(repeats):  # which condition goes first alternates
                for with_clients in (k % 2 == 1, k % 2 == 0):
                    if with_clients:
                        with _Clients(server.url, CLIENTS, hub) as clients:
                            watched.append(_window(engine, window))
                        received += clients.received
                    else:
                        alone.append(_window(engine, window))
            gen.kill()
            gen.wait()
        finally:
            server.stop(drain=False)
    print(f"load after: {_uptime()}", flush=True)
    for name, windows in (("no client", alone), (f"{CLIENTS} clients", watched)):
        p99 = ", ".join(f"{np.percentile(w, 99):.0f}" for w in windows if w)
        print(f"dispatch p99 per window (ms), {name}: {p99}", flush=True)

    def pct(windows: list[list[float]], q: float) -> list[float]:
        return [float(np.percentile(w, q)) for w in windows if w]

    dispatches = f"{sum(map(len, watched))} / {sum(map(len, alone))} dispatches"
    heard = f"each client heard {int(np.median(received))} notes (median)" if received else ""
    return [
        Row(
            figure=f"anomaly -> dispatch p99, {CLIENTS} console clients on /live",
            unit="ms",
            samples=pct(watched, 99),
            baseline="no client, same engine, alternating windows",
            baseline_samples=pct(alone, 99),
            higher_is_better=False,
            target="ratio <= 1.10",
            note=f"{window:.0f} s windows at {RATE:,.0f} points/s; {dispatches}; {heard}",
        ),
        Row(
            figure=f"anomaly -> dispatch p50, {CLIENTS} console clients on /live",
            unit="ms",
            samples=pct(watched, 50),
            baseline="no client",
            baseline_samples=pct(alone, 50),
            higher_is_better=False,
        ),
    ]


BENCHMARKS = [bench_fanout]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clients"]:
        _clients_main(sys.argv[2], int(sys.argv[3]))
