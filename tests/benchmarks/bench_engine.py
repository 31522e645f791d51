"""The engine under load: HTTP push → online features → scores → policies → action dispatch.

One engine process (this one) serves ``POST /v1/telemetry``; a separate generator process (this
file run as a script) pushes NDJSON batches for 34 services x 6 metrics = 204 series as fast as
the engine accepts them, honouring 429 + Retry-After, and plants anomaly bursts so that events,
decisions and dispatches happen all along. The actions' target runs in a third process, as a
remote service would (in this process it competed for the GIL it is meant to measure). Figures,
with baselines measured in the same run:

- sustained points/s accepted *and scored* (points scored per wall second over each window);
  baseline: PyOD ``decision_function`` alone on the same feature rows, in points/s equivalent
  (rows/s x points per row), i.e. the ceiling if everything but the detector were free;
- latency from the arrival of the batch that closed a feature row to its anomaly event, and from
  the event to its action's dispatch (p50, p99);
- PolicyHost decisions/s vs durable-rules' raw ``post`` on a one-rule ruleset;
- RSS at the start and end of the soak. ``SELFHEAL_BENCH_SOAK_S`` sets the soak (default 20 s;
  the full run uses 600).

Run: ``.venv/bin/python tests/benchmarks/run.py engine`` (``--repeats N`` = measurement windows).
"""

from __future__ import annotations

import gc
import json
import os
import queue
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

from harness import Row  # noqa: E402

DEMO_SPEC = HERE.parents[1] / "experiments" / "demo_quick.yaml"
BASE = {
    "request_rate": 100.0, "latency_p50_ms": 50.0, "latency_p99_ms": 200.0,
    "error_rate": 0.01, "cpu_util": 0.5, "memory_util": 0.5,
}  # fmt: skip
STEP_S = 15.0  # one point per series every 15 s of platform time (Prometheus' default scrape)
TARGET_RATE = 50_000.0  # points/s offered during the soak (or 80% of saturation if lower)
LOAD_FRACTION = float(os.environ.get("SELFHEAL_BENCH_LOAD", "0.6"))  # soak rate / saturation rate
BURST_EVERY = 40  # feature buckets between anomaly bursts (one service, 3 buckets)
T0 = 1_700_000_000.0  # in the past: the engine refuses points more than 10 minutes ahead


def _spec() -> Any:
    """The demo's feature spec (scale-free z-scores and ratios over 60-240 one-minute buckets)."""
    import yaml

    from engine.features import FeatureSpec

    return FeatureSpec.model_validate(yaml.safe_load(DEMO_SPEC.read_text())["features"])


METRICS = list(BASE)
SERVICES = [f"svc-{i:02d}" for i in range(-(-200 // len(METRICS)))]  # ceil: at least 200 series
POINTS_PER_ROW = len(METRICS) * 60.0 / STEP_S  # one row per service per 1-minute bucket
STEPS_PER_BODY = max(1, 5000 // (len(SERVICES) * len(METRICS)))  # ~5,000 points per request


def _values(rng: np.random.Generator, anomalous: bool) -> list[float]:
    noise = rng.normal(size=len(METRICS)) * 0.03
    factor = 3.0 if anomalous else 1.0
    return [BASE[m] * factor * (1.0 + n) for m, n in zip(METRICS, noise, strict=True)]


def _pipeline() -> Any:
    from engine.detectors.pipeline import ScoringPipeline
    from engine.features import OnlineFeatures

    spec = _spec()
    online = OnlineFeatures(spec)
    rng = np.random.default_rng(0)
    rows = []
    steps = int(900 * 60 / STEP_S)  # 900 buckets: past the 240-bucket warm-up
    for k in range(steps):
        for s in SERVICES[:4]:
            for m, v in zip(METRICS, _values(rng, False), strict=True):
                rows += online.push(T0 - 10**7 + k * STEP_S, s, m, v)
    X = np.array([r.values for r in rows])
    return ScoringPipeline(spec, "IForest", {"n_estimators": 150, "contamination": 0.01}).fit(X), X


def _rules(folder: Path, admin_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    services = "\n".join(f"  {s}: {{replicas: 4}}" for s in SERVICES)
    (folder / "topology.yaml").write_text(f"services:\n{services}\n")
    (folder / "bench.yaml").write_text(
        "policy: bench\nversion: 1\nrules:\n"
        "  - name: restart-any\n"
        "    when: {services: ['svc-*']}\n"
        "    then: {action: restart}\n"
        "    safeguards: {cooldown: 0.001, max_per_hour: 1000000, max_per_hour_global: 1000000,"
        " max_concurrent: 1000, blast_radius: 1.0}\n"
        "    verify: {steady_state: {score_below: 1.0}, deadline: 5s}\n"
    )
    (folder / "targets.yaml").write_text(
        f"defaults:\n  backend: http\n  http: {{url: '{admin_url}/admin'}}\n"
    )
    return folder


# ------------------------------------------------------------------------------------ generator


def _bodies(t_start: float, out: Any, stop: Any) -> None:
    """Producer thread: NDJSON bodies in timestamp order, each covering STEPS_PER_BODY steps.

    One step (every series once) is pre-rendered with a timestamp placeholder: 16 normal variants
    and one per anomalous service, so the generator costs a string replace per step and never
    limits the rate it measures.
    """
    rng = np.random.default_rng(1)

    def step(victim: str | None) -> str:
        return "\n".join(
            f'{{"ts":@TS@,"service":"{s}","metric":"{m}","value":{v:.6g}}}'
            for s in SERVICES
            for m, v in zip(METRICS, _values(rng, s == victim), strict=True)
        )

    normal = [step(None) for _ in range(16)]
    burst = {s: step(s) for s in SERVICES}
    n = STEPS_PER_BODY * len(SERVICES) * len(METRICS)
    t = t_start
    i = 0
    while not stop.is_set():
        parts = []
        for k in range(STEPS_PER_BODY):
            ts = t + k * STEP_S
            bucket = int(ts // 60)
            victim = SERVICES[(bucket // BURST_EVERY) % len(SERVICES)] if bucket % BURST_EVERY < 3 else None
            template = burst[victim] if victim else normal[i % len(normal)]
            i += 1
            parts.append(template.replace("@TS@", repr(ts)))
        t += STEPS_PER_BODY * STEP_S
        body = ("\n".join(parts).encode(), n)
        while not stop.is_set():
            try:
                out.put(body, timeout=0.1)
                break
            except queue.Full:
                continue


def _generate(url: str, seconds: float, rate: float, t_start: float) -> None:
    """Push for ``seconds`` at ``rate`` points/s (0: as fast as accepted); print totals as JSON.

    Bodies are built by a producer thread while the previous request is in flight, and sent in
    order on one connection (points of a series must arrive in time order).
    """
    import httpx

    bodies: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=8)
    stop_event = threading.Event()
    producer = threading.Thread(target=_bodies, args=(t_start, bodies, stop_event), daemon=True)
    producer.start()
    sent = throttled = 0
    began = time.monotonic()
    stop = began + seconds
    with httpx.Client(timeout=30) as client:
        body: tuple[bytes, int] | None = None
        while time.monotonic() < stop:
            if rate and sent > (time.monotonic() - began) * rate:
                time.sleep(0.002)
                continue
            if body is None:
                body = bodies.get()
            r = client.post(
                f"{url}/v1/telemetry", content=body[0], headers={"content-type": "application/x-ndjson"}
            )
            if r.status_code == 429:
                throttled += 1
                time.sleep(0.005)
                continue
            r.raise_for_status()
            sent += body[1]
            body = None
    stop_event.set()
    print(json.dumps({"sent": sent, "throttled": throttled}))


def _admin_main() -> None:
    """The actions' target in its own process, as in production (the tests' ``AdminServer``, with
    HTTP/1.1 keep-alive so the engine's pooled client reuses its connections). Prints its port."""
    from test_runtime_support import AdminServer

    with AdminServer(keep_alive=True) as admin:
        print(admin.server.server_address[1], flush=True)
        admin.thread.join()


class _Admin:
    """``_admin_main`` in a subprocess; ``restarts()`` asks it how many restarts it received."""

    def __enter__(self) -> _Admin:
        self.proc = subprocess.Popen([sys.executable, __file__, "--admin"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        return self

    def restarts(self) -> int:
        import httpx

        return int(httpx.get(f"{self.url}/calls", params={"prefix": "/admin/restart"}).json()["calls"])

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------------------------ baselines


def _pyod_rate(pipeline: Any, X: np.ndarray, repeats: int) -> list[float]:
    """PyOD decision_function alone on feature rows, in the engine's micro-batch size, as points/s."""
    score = pipeline.detector_.estimator_.decision_function  # the PyOD model inside the adapter
    rows = np.tile(X, (max(1, 5000 // len(X)) + 1, 1))[:5000]
    batch = 200
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            score(rows[i : i + batch])
        out.append(len(rows) / (time.perf_counter() - start) * POINTS_PER_ROW)
    return out


def _durable_rates(host: Any, repeats: int, n: int = 5000) -> tuple[list[float], list[float]]:
    """PolicyHost decisions/s on anomaly events vs durable-rules' raw post on a one-rule ruleset."""
    import uuid

    from durable.engine import Host

    from engine.records import AnomalyEvent

    raw_host = Host()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    raw_host.get_action = lambda _name: lambda c: None  # type: ignore[method-assign]
    raw_host.register_rulesets({name: {"r": {"all": [{"m": {"t": "anomaly"}}], "run": "r"}}})
    ours, raw = [], []
    for _ in range(repeats):
        events = [
            AnomalyEvent(service=SERVICES[i % 20], detector="IForest", score=0.99, ts=T0 + i, threshold=0.9)
            for i in range(n)
        ]
        start = time.perf_counter()
        for e in events:
            host.post(e)
        ours.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(n):
            raw_host.post(name, {"t": "anomaly", "id": uuid.uuid4().hex, "i": i})
        raw.append(n / (time.perf_counter() - start))
    return ours, raw


# ------------------------------------------------------------------------------------ benchmark


def _generator(url: str, seconds: float, rate: float, t_start: float) -> subprocess.Popen[str]:
    args = [sys.executable, __file__, "--generate", url, str(seconds), str(rate), str(t_start)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def _engine_cpu(proc: Any, generator_pid: int) -> float:
    """CPU seconds used so far by the engine: this process and its scoring workers (not the generator)."""
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        if child.pid != generator_pid:
            try:
                total += sum(child.cpu_times()[:2])
            except Exception:  # a worker may have exited between listing and reading
                continue
    return total


def _finish(gen: subprocess.Popen[str], engine: Any, seconds: float) -> tuple[int, int]:
    """Wait for the generator (it runs ``seconds``), then until all it got accepted has been scored."""
    out, _ = gen.communicate(timeout=seconds + 120)
    totals = json.loads(out.strip().splitlines()[-1])
    deadline = time.monotonic() + 60
    while engine.queue.accepted_total > engine.points_scored and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(totals["sent"]), int(totals["throttled"])


def bench_engine(repeats: int) -> list[Row]:
    import psutil

    from engine.policy.host import PolicyHost
    from engine.policy.loader import load_policies
    from engine.runtime.components import assemble
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine, serve_in_thread, tune_for_serving

    soak = float(os.environ.get("SELFHEAL_BENCH_SOAK_S", "20"))
    window = float(os.environ.get("SELFHEAL_BENCH_WINDOW_S", "5"))
    warmup = 8.0  # past the features' 240-bucket warm-up at full rate
    pipeline, X = _pipeline()
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-"))
    proc = psutil.Process()
    with _Admin() as admin:
        rules = _rules(tmp / "rules", admin.url)
        settings = load_settings(
            overrides={
                "port": 0,
                "tick_s": 0.05,
                "queue_max_points": 50_000,
                "workers": int(os.environ.get("SELFHEAL_BENCH_WORKERS", "2")),
                "verify_interval_s": 0.2,
                "limits": {
                    "max_actions_per_hour": 10**6,
                    "max_failures_per_hour": 10**6,
                    "max_concurrent": 1000,
                },
            },
            environ={},
        )
        engine = build_engine(
            assemble(pipeline, rules, bundle_version="bench"),
            settings,
            tmp / "journals",
            record_latencies=True,
        )
        switch = sys.getswitchinterval()
        server = serve_in_thread(engine)
        tune_for_serving()  # as `selfheal run` does in its own process
        try:
            # Phase 1, saturation: the generator pushes as fast as the engine accepts.
            gen = _generator(server.url, warmup + window * repeats, 0, T0)
            time.sleep(warmup)
            rates, cpu_per_point, main_share = [], [], []
            for _ in range(repeats):
                p0, t0, c0 = engine.points_scored, time.perf_counter(), _engine_cpu(proc, gen.pid)
                m0 = sum(proc.cpu_times()[:2])
                time.sleep(window)
                done = engine.points_scored - p0
                rates.append(done / (time.perf_counter() - t0))
                used = _engine_cpu(proc, gen.pid) - c0
                cpu_per_point.append(used / max(done, 1) * 1e6)
                main_share.append((sum(proc.cpu_times()[:2]) - m0) / max(used, 1e-9))
            sent, throttled = _finish(gen, engine, warmup + window * repeats)
            # Phase 2, soak at a fixed offered rate below saturation: latency and memory.
            offered = min(TARGET_RATE, LOAD_FRACTION * float(np.median(rates)))
            lat = engine.latencies
            assert lat is not None
            for samples in lat.values():
                samples.clear()
            actions_before = admin.restarts()
            rss_start = proc.memory_info().rss / 2**20
            gen = _generator(server.url, soak, offered, T0 + 10_000_000)
            soak_sent, _ = _finish(gen, engine, soak)
            rss_end = proc.memory_info().rss / 2**20
            a2e = np.array(lat["arrival_to_event"]) * 1000
            e2d = np.array(lat["event_to_dispatch"]) * 1000
            e2j = np.array(lat["event_to_journaled"]) * 1000
            dispatched = admin.restarts() - actions_before
            scored = engine.points_scored
        finally:
            server.stop()
            sys.setswitchinterval(switch)
            gc.unfreeze()  # the other benchmarks run in this process
    pyod = _pyod_rate(pipeline, X, repeats)
    ours, raw = _durable_rates(PolicyHost(load_policies(rules), tick_seconds=60.0), repeats)
    lost = sent + soak_sent - scored
    note = (
        f"{len(SERVICES) * len(METRICS)} series, {window:.0f}s x {repeats} at saturation; "
        f"sent {sent + soak_sent:,}, scored {scored:,} (unscored {lost}), 429 answers {throttled}"
    )
    soak_note = f"soak {soak:.0f}s at {offered:,.0f} pts/s offered"
    return [
        Row("engine points/s, HTTP push -> scored", "pts/s", rates,
            "PyOD decision_function alone (pts/s equiv.)", pyod, target=">= 50,000", note=note),
        Row("engine CPU per point (all engine processes)", "us", cpu_per_point, higher_is_better=False,
            note=f"idle 2-core ceiling ~ {2e6 / float(np.median(cpu_per_point)):,.0f} pts/s; "
            f"workers={settings.workers}, engine process {float(np.median(main_share)):.0%} of it"),
        Row("arrival -> anomaly event p50", "ms", [float(np.percentile(a2e, 50))], higher_is_better=False,
            note=f"{len(a2e)} events; {soak_note}"),
        Row("arrival -> anomaly event p99", "ms", [float(np.percentile(a2e, 99))], higher_is_better=False),
        Row("anomaly -> action dispatch p50", "ms", [float(np.percentile(e2d, 50))], higher_is_better=False,
            note=f"{len(e2d)} dispatches, {dispatched} actions received by the target"),
        Row("anomaly -> decision + execution journaled p99", "ms", [float(np.percentile(e2j, 99))],
            higher_is_better=False, note=f"p50 {float(np.percentile(e2j, 50)):.1f} ms (one fsync'd commit)"),
        Row("anomaly -> action dispatch p99", "ms", [float(np.percentile(e2d, 99))], higher_is_better=False,
            target="< 50"),
        Row("PolicyHost decisions/s", "events/s", ours, "durable-rules raw post/s", raw),
        Row(f"RSS end of {soak:.0f}s soak", "MiB", [rss_end], "RSS at soak start", [rss_start],
            higher_is_better=False, target="flat"),
    ]  # fmt: skip


BENCHMARKS = [bench_engine]


if __name__ == "__main__":
    if sys.argv[1:] == ["--admin"]:
        _admin_main()
    elif len(sys.argv) == 6 and sys.argv[1] == "--generate":
        _generate(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        from harness import render

        print(render(bench_engine(int(os.environ.get("SELFHEAL_BENCH_REPEATS", "3")))))
