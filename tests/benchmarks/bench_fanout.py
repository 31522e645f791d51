"""Console clients on the live stream against the engine's anomaly → dispatch latency.

One engine (this process) under the engine benchmark's load (``bench_engine``: 204 series pushed by
a generator process at a fixed rate, anomaly bursts all along, every one a restart dispatched to a
target in a third process). A fourth process plays ``CLIENTS`` browsers on the services page: each
holds a server-sent-event stream on ``GET /live`` and fetches the services table
(``/services/table``) whenever a message says it changed, at a random moment of the next
``SPREAD_S``, as the page's script does (all at once, 50 fetches were a burst that the p99 of the
first run of this benchmark showed: median ratio 1.24, with p50 unchanged); it opens the
streams when told and closes them when told, so it starts once (its start-up is in no window). It
runs at ``nice`` +10: browsers sit on other machines, and on this machine's 2 shared cores their
CPU would otherwise be counted against the engine; the messages and fetches each client made are
printed, to show they kept up.

Windows interleave, A B A B ...: A with no client, B with ``CLIENTS`` streams open; each window
starts ``SETTLE_S`` after its streams are opened or closed. Per window: anomaly event → action
dispatch p99 and p50, from the engine's own latency record. A noisy machine drifts over minutes,
so the figure is the ratio of each B window to the A window just before it (one pair), and the
table gives the median of the pairs' ratios with their spread (min, quartiles, max); the p99 with
0 and with ``CLIENTS`` clients (medians over windows) are printed, with the load average before
and after the run (``/proc/loadavg``).

Why it should not matter (``engine.runtime.console.live``): the journal writer dispatches a
commit's actions before its listeners hear the commit's notes; the console's listener only bumps
a topic's version; one console thread publishes at most four snapshots a second, each encoded
once, with one wake-up per event loop, and every stream writes the same bytes.

Run: ``.venv/bin/python tests/benchmarks/run.py --repeats 8 fanout`` (``--repeats``: A/B pairs;
``SELFHEAL_BENCH_FANOUT_RATE`` points/s offered, default 40,000; ``SELFHEAL_BENCH_WINDOW_S``,
default 15).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
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
SETTLE_S = 2.0  # after opening or closing the streams, before a window starts
CLIENT_NICE = 10
SPREAD_S = 2.0  # the page's script fetches the services table at a random moment of the next 2 s


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------------------ the clients


def _clients_main(url: str) -> None:
    """Browsers on the services page, driven by stdin: ``open N`` opens N streams on
    ``url``/live (answers ``open`` once all are connected), each fetching the services table
    whenever a message says it changed, as the page's script does; ``close`` closes them
    (answers with each one's message and fetch counts as JSON)."""
    import httpx

    os.nice(CLIENT_NICE)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def one(
        client: httpx.AsyncClient, pages: httpx.AsyncClient, k: int, counts: list[int], up: asyncio.Event
    ) -> None:
        """One browser on the services page: the stream, and the table fetched on each version."""
        shown = -1
        async with client.stream("GET", f"{url}/live") as r:
            up.set()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    counts[k] += 1
                    version = json.loads(line[6:])["topics"]["services"]
                    if version > shown >= 0:
                        await asyncio.sleep(random.random() * SPREAD_S)  # as the page's script
                        (await pages.get(f"{url}/services/table")).raise_for_status()
                        fetches[k] += 1
                    shown = version

    fetches: list[int] = []

    async def open_(n: int) -> tuple[Any, list[int], list[asyncio.Task[None]]]:
        client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=n))
        pages = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=n))
        counts, ups = [0] * n, [asyncio.Event() for _ in range(n)]
        fetches[:] = [0] * n
        tasks = [asyncio.ensure_future(one(client, pages, k, counts, ups[k])) for k in range(n)]
        await asyncio.gather(*(u.wait() for u in ups))
        return (client, pages), counts, tasks

    async def close(clients: Any, tasks: list[asyncio.Task[None]]) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()

    state: Any = None
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["open"]:
            state = asyncio.run_coroutine_threadsafe(open_(int(cmd[1])), loop).result()
            print("open", flush=True)
        elif cmd[:1] == ["close"] and state is not None:
            client, counts, tasks = state
            asyncio.run_coroutine_threadsafe(close(client, tasks), loop).result()
            print(json.dumps({"messages": counts, "fetches": fetches}), flush=True)
            state = None


class _Clients:
    """The clients' process (``_clients_main``), started once."""

    def __init__(self, url: str, live: Any) -> None:
        args = [sys.executable, __file__, "--clients", url]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.live = live

    def _ask(self, line: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def open(self, n: int) -> None:
        assert self._ask(f"open {n}") == "open"
        deadline = time.monotonic() + 60
        while self.live.clients < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.live.clients}/{n} console clients connected after 60 s")
            time.sleep(0.05)

    def close(self) -> dict[str, list[int]]:
        counts: dict[str, list[int]] = json.loads(self._ask("close"))
        deadline = time.monotonic() + 30
        while self.live.clients and time.monotonic() < deadline:  # noticed at the next message
            time.sleep(0.05)
        return counts

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------------------------ the run


def _window(engine: Any, seconds: float) -> list[float]:
    """Anomaly → dispatch latencies (ms) of the dispatches made in the next ``seconds``."""
    samples = engine.latencies["event_to_dispatch"]
    samples.clear()
    time.sleep(seconds)
    return [x * 1000 for x in list(samples)]


def _spread(values: list[float]) -> str:
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return "min {:.2f}, quartiles {:.2f} / {:.2f} / {:.2f}, max {:.2f}".format(*q)


def bench_fanout(repeats: int) -> list[Row]:
    from engine.runtime.server import serve_in_thread, tune_for_serving

    window = float(os.environ.get("SELFHEAL_BENCH_WINDOW_S", "15"))
    load_before = _load()
    pipeline, _ = _pipeline()
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-fanout-"))
    alone: list[list[float]] = []  # A windows
    watched: list[list[float]] = []  # B windows
    heard: list[int] = []
    fetched: list[int] = []
    with _Admin() as admin:
        engine = _build(pipeline, tmp, admin.url)
        server = serve_in_thread(engine)
        tune_for_serving()
        live = server._server.config.app.state.console_live
        clients = _Clients(server.url, live)
        try:
            gen = _generator(server.url, 3600.0, RATE, T0)  # killed after the last window
            time.sleep(WARMUP_S)
            for _ in range(repeats):
                time.sleep(SETTLE_S)
                alone.append(_window(engine, window))
                clients.open(CLIENTS)
                time.sleep(SETTLE_S)
                watched.append(_window(engine, window))
                got = clients.close()
                heard += got["messages"]
                fetched += got["fetches"]
            gen.kill()
            gen.wait()
        finally:
            clients.stop()
            server.stop(drain=False)
    load_after = _load()

    def pct(windows: list[list[float]], q: float) -> list[float]:
        return [float(np.percentile(w, q)) if w else float("nan") for w in windows]

    p99_a, p99_b = pct(alone, 99), pct(watched, 99)
    p50_a, p50_b = pct(alone, 50), pct(watched, 50)
    ratios = [b / a for a, b in zip(p99_a, p99_b, strict=True) if a > 0 and b == b]
    ratios50 = [b / a for a, b in zip(p50_a, p50_b, strict=True) if a > 0 and b == b]
    print(f"load average before {load_before}, after {load_after}", flush=True)
    print("dispatch p99 per window (ms), A = no client, B = 50 clients:", flush=True)
    for k, (a, b) in enumerate(zip(p99_a, p99_b, strict=True)):
        print(f"  pair {k + 1}: A {a:.0f}  B {b:.0f}  ratio {b / a:.2f}", flush=True)
    print(
        f"dispatch p99, median over windows: {np.nanmedian(p99_a):.0f} ms with 0 clients,"
        f" {np.nanmedian(p99_b):.0f} ms with {CLIENTS}; p99 ratio per pair: median"
        f" {np.median(ratios):.2f} ({_spread(ratios)})",
        flush=True,
    )
    dispatches = f"{sum(map(len, watched)):,} / {sum(map(len, alone)):,} dispatches (B / A)"
    messages = (
        f"each client got {int(np.median(heard))} messages and fetched the table"
        f" {int(np.median(fetched))} times a window (median)"
        if heard
        else ""
    )
    setting = f"{len(ratios)} A/B pairs of {window:.0f} s at {RATE:,.0f} points/s"
    setting += f"; load {load_before} -> {load_after}"
    return [
        Row(
            figure=f"anomaly -> dispatch p99 ratio, {CLIENTS} console clients / none, per A/B pair",
            unit="x",
            samples=ratios,
            higher_is_better=False,
            target="<= 1.10",
            note=f"{setting}; spread {_spread(ratios)}",
        ),
        Row(
            figure=f"anomaly -> dispatch p99, {CLIENTS} console clients on /live",
            unit="ms",
            samples=[x for x in p99_b if x == x],
            baseline="no client, A windows of the same run",
            baseline_samples=[x for x in p99_a if x == x],
            higher_is_better=False,
            note=f"{dispatches}; {messages}",
        ),
        Row(
            figure=f"anomaly -> dispatch p50 ratio, {CLIENTS} console clients / none, per A/B pair",
            unit="x",
            samples=ratios50,
            higher_is_better=False,
            note=f"spread {_spread(ratios50)}",
        ),
    ]


BENCHMARKS = [bench_fanout]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clients"]:
        _clients_main(sys.argv[2])
