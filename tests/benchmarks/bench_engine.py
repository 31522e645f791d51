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
  the event to its action's dispatch (p50, p99), with the stages in between for this build: the
  policies' decisions handed to the journal writer, their wait for the writer thread, the writer's
  commit, each execution's wait for an actuator thread;
- PolicyHost decisions/s vs durable-rules' raw ``post`` on a one-rule ruleset;
- RSS at the start and end of the soak. ``SELFHEAL_BENCH_SOAK_S`` sets the soak (default 20 s;
  the full run uses 600).

Every figure is measured for two builds in the same run, each engine in a process of its own:
the build before the runtime was cut into stages (commit ``BASELINE_COMMIT``, or
``SELFHEAL_BENCH_BASELINE``; checked out into a temporary ``git worktree`` and imported through
``PYTHONPATH``) and this one, in ``--repeats``
rounds that alternate which build goes first; the table shows the median over rounds of this build
against that baseline. ``SELFHEAL_BENCH_BUILDS=this`` measures this build alone.

Run: ``.venv/bin/python tests/benchmarks/run.py engine`` (``--repeats N`` = measurement windows).
"""

from __future__ import annotations

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
BURST_EVERY = 8  # feature buckets from one anomaly burst to the next (one service's, BURST_BUCKETS long);
# a service's turn comes every 34 x 8 = 272 buckets, after its last burst has left the features'
# 240-bucket windows
BURST_BUCKETS = 3
T0 = 1_700_000_000.0  # in the past: the engine refuses points more than 10 minutes ahead
BASELINE_COMMIT = os.environ.get("SELFHEAL_BENCH_BASELINE", "a7da661")
"""The build compared against: by default the last one before the runtime's stage split;
``SELFHEAL_BENCH_BASELINE=851d23d`` is the last one before the stream detector (stateless scoring)."""
REPO = HERE.parents[1]


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
    """The detector of whichever build is on the path: the stream detector (stateful
    post-processing, per-series states), or a baseline build's stateless ``ScoringPipeline``."""
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
    try:
        from engine.detectors.stream_config import StreamConfig
        from engine.testing.detectors import fit_on_rows
    except ImportError:  # a build before the stream detector
        from engine.detectors.pipeline import ScoringPipeline  # type: ignore[import-not-found]

        return ScoringPipeline(spec, "IForest", {"n_estimators": 150, "contamination": 0.01}).fit(X), X
    config = StreamConfig.model_validate(
        {
            "groups": [{"name": "default", "features": spec}],
            "model": {"class": "IForest", "params": {"n_estimators": 150, "contamination": 0.01}},
            "calibration": "ecdf",
        }
    )
    return fit_on_rows(config, X), X


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

    One step (every series once) is pre-rendered with a timestamp placeholder, service by service:
    16 normal variants, and each service's anomalous values. A burst step is a normal variant with
    its victim's values swapped in, so a burst is one service's, as planted: the other services
    keep values their history has seen. (Until 2026-12-07 a burst step drew fresh values for every
    service, which the detector flagged on ~10 of the 34, against a history of a few variants:
    each burst was a storm of ~16 decisions in one tick; and the variants were counted from each
    generator's start, so the soak's first buckets, after its jump of the clock, mixed variants
    their history had never seen: another storm.) The generator costs a join and a string replace
    per step and never limits the rate it measures.
    """
    rng = np.random.default_rng(1)

    def values(service: str, anomalous: bool) -> str:
        return "\n".join(
            f'{{"ts":@TS@,"service":"{service}","metric":"{m}","value":{v:.6g}}}'
            for m, v in zip(METRICS, _values(rng, anomalous), strict=True)
        )

    variants = [[values(s, False) for s in SERVICES] for _ in range(16)]
    normal = ["\n".join(v) for v in variants]
    burst = [values(s, True) for s in SERVICES]
    n = STEPS_PER_BODY * len(SERVICES) * len(METRICS)
    t = t_start
    while not stop.is_set():
        parts = []
        for k in range(STEPS_PER_BODY):
            ts = t + k * STEP_S
            bucket = int(ts // 60)
            v = int(ts // STEP_S) % len(normal)  # by the clock, not from the generator's start
            if bucket % BURST_EVERY < BURST_BUCKETS:
                victim = (bucket // BURST_EVERY) % len(SERVICES)
                template = "\n".join([*variants[v][:victim], burst[victim], *variants[v][victim + 1 :]])
            else:
                template = normal[v]
            parts.append(template.replace("@TS@", repr(ts)))
        t += STEPS_PER_BODY * STEP_S
        body = ("\n".join(parts).encode(), n, t)
        while not stop.is_set():
            try:
                out.put(body, timeout=0.1)
                break
            except queue.Full:
                continue


def _generate(url: str, seconds: float, rate: float, t_start: float) -> None:
    """Push for ``seconds`` at ``rate`` points/s (0: as fast as accepted); print totals as JSON,
    with the platform time the next push should start at (``next_ts``: the end of the last body
    accepted).

    Bodies are built by a producer thread while the previous request is in flight, and sent in
    order on one connection (points of a series must arrive in time order).
    """
    import httpx

    bodies: queue.Queue[tuple[bytes, int, float]] = queue.Queue(maxsize=8)
    stop_event = threading.Event()
    producer = threading.Thread(target=_bodies, args=(t_start, bodies, stop_event), daemon=True)
    producer.start()
    sent = throttled = 0
    next_ts = t_start
    began = time.monotonic()
    stop = began + seconds
    with httpx.Client(timeout=30) as client:
        body: tuple[bytes, int, float] | None = None
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
            next_ts = body[2]
            body = None
    stop_event.set()
    print(json.dumps({"sent": sent, "throttled": throttled, "next_ts": next_ts}))


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
    if hasattr(pipeline, "fitted_groups"):  # the stream detector: its one group's model
        (group,) = pipeline.fitted_groups
        model = pipeline._groups[group].model
    else:  # a baseline build's ScoringPipeline
        model = pipeline.detector_
    score = model.estimator_.decision_function  # the PyOD model inside the adapter
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


def _finish(gen: subprocess.Popen[str], engine: Any, seconds: float) -> tuple[int, int, float]:
    """Wait for the generator (it runs ``seconds``), then until all it got accepted has been
    scored; its totals: points sent, 429s, and the platform time where it stopped."""
    out, _ = gen.communicate(timeout=seconds + 120)
    totals = json.loads(out.strip().splitlines()[-1])
    deadline = time.monotonic() + 60
    while engine.queue.accepted_total > engine.points_scored and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(totals["sent"]), int(totals["throttled"]), float(totals["next_ts"])


def _assemble() -> Any:
    """``assemble`` of whichever build is on the path (it moved in the stage split)."""
    try:
        from engine.runtime.components import assemble
    except ImportError:  # the baseline build
        from engine.runtime.adapters import assemble  # type: ignore[no-redef]
    return assemble


def _build(pipeline: Any, tmp: Path, admin_url: str) -> Any:
    """The benchmark's engine (of whichever build is on the path): restart rules for every
    service, limits out of the way, latencies recorded."""
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine

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
    components = _assemble()(pipeline, _rules(tmp / "rules", admin_url), bundle_version="bench")
    return build_engine(components, settings, tmp / "journals", record_latencies=True)


def _measure(repeats: int, offered: float = 0.0) -> dict[str, Any]:
    """One build's figures (this process imports whichever ``engine`` is on the path); the soak
    offers ``offered`` points/s, or (0) ``LOAD_FRACTION`` of this run's saturation rate."""
    import psutil

    from engine.runtime.server import serve_in_thread, tune_for_serving

    soak = float(os.environ.get("SELFHEAL_BENCH_SOAK_S", "20"))
    window = float(os.environ.get("SELFHEAL_BENCH_WINDOW_S", "5"))
    warmup = 8.0  # past the features' 240-bucket warm-up at full rate
    pipeline, X = _pipeline()
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-"))
    proc = psutil.Process()
    with _Admin() as admin:
        engine = _build(pipeline, tmp, admin.url)
        server = serve_in_thread(engine)
        tune_for_serving()  # as `selfheal run` does in its own process
        try:
            # Phase 1, saturation: the generator pushes as fast as the engine accepts.
            gen = _generator(server.url, warmup + window * repeats, 0, T0)
            time.sleep(warmup)
            rates, cpu_per_point = [], []
            for _ in range(repeats):
                p0, t0, c0 = engine.points_scored, time.perf_counter(), _engine_cpu(proc, gen.pid)
                time.sleep(window)
                done = engine.points_scored - p0
                rates.append(done / (time.perf_counter() - t0))
                cpu_per_point.append((_engine_cpu(proc, gen.pid) - c0) / max(done, 1) * 1e6)
            sent, throttled, next_ts = _finish(gen, engine, warmup + window * repeats)
            # Phase 2, soak at a fixed offered rate below saturation: latency and memory.
            offered = offered or min(TARGET_RATE, LOAD_FRACTION * float(np.median(rates)))
            lat = engine.latencies
            assert lat is not None
            for samples in lat.values():
                samples.clear()
            actions_before = admin.restarts()
            rss_start = proc.memory_info().rss / 2**20
            # It goes on from the platform time where the first phase stopped. (Until 2026-12-07
            # it jumped 10^7 s ahead: its first tick then flagged ~5 services at once, a storm of
            # decisions that was half of a soak's slowest dispatches.)
            gen = _generator(server.url, soak, offered, next_ts)
            soak_sent, _, _ = _finish(gen, engine, soak)
            rss_end = proc.memory_info().rss / 2**20
            out = {k: [x * 1000 for x in v] for k, v in lat.items()}
            dispatched = admin.restarts() - actions_before
            scored = engine.points_scored
        finally:
            server.stop()
    return {
        **out,
        "rates": rates,
        "cpu_per_point": cpu_per_point,
        "offered": offered,
        "sent": sent + soak_sent,
        "scored": scored,
        "throttled": throttled,
        "dispatched": dispatched,
        "rss": [rss_start, rss_end],
        "pyod": _pyod_rate(pipeline, X, repeats),
    }


def _baseline_tree(out: Path) -> Path:
    """The baseline build, checked out with ``git worktree`` (removed by ``_drop_tree``)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(out), BASELINE_COMMIT],
        check=True,
        capture_output=True,
    )
    return out


def _drop_tree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


def _run_build(root: Path, repeats: int, offered: float) -> dict[str, Any]:
    """``_measure`` in a fresh interpreter that imports ``engine`` from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(repeats), str(offered)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring the build at {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def _rounds(repeats: int, both: bool, tmp: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``repeats`` rounds of one soak per build, alternating which build goes first.

    The machine is shared and its load drifts over minutes: measuring one build after the other
    once would compare two loads, alternating lets the medians compare builds. Every soak offers
    the rate the first one chose, so both builds' latencies are measured under the same load.
    """
    this: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    root = _baseline_tree(tmp / BASELINE_COMMIT) if both else None
    offered = 0.0
    try:
        for i in range(repeats):
            order = [(REPO, this), (root, base)] if root else [(REPO, this)]
            for tree, out in order if i % 2 else reversed(order):
                print(f"  round {i + 1}/{repeats}: build {tree}", file=sys.stderr, flush=True)
                out.append(_run_build(tree, 1, offered))
                offered = out[-1]["offered"]
    finally:
        if root:
            _drop_tree(root)
    return this, base


def bench_engine(repeats: int) -> list[Row]:
    from engine.policy.host import PolicyHost
    from engine.policy.loader import load_policies

    both = os.environ.get("SELFHEAL_BENCH_BUILDS", "both") != "this"
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-builds-"))
    this, base = _rounds(repeats, both, tmp)
    with _Admin() as admin:  # policy host figures: this build's host against raw durable-rules
        ours, raw = _durable_rates(
            PolicyHost(load_policies(_rules(tmp / "rules", admin.url)), tick_seconds=60.0), repeats
        )
    label = f"build {BASELINE_COMMIT}" if base else ""

    def per_round(runs: list[dict[str, Any]], key: str, q: float | None) -> list[float]:
        if q is None:
            return [x for r in runs for x in r[key]]
        return [_pct(r[key], q) for r in runs]

    def row(figure: str, unit: str, key: str, q: float | None = None, **kw: Any) -> Row:
        return Row(figure, unit, per_round(this, key, q), label, per_round(base, key, q), **kw)

    def total(key: str) -> int:
        return sum(len(r[key]) if isinstance(r[key], list) else r[key] for r in this)

    def per_tick(key: str) -> str:
        """How many ``key`` samples a decided tick makes, on average over this build's soaks."""
        return f"{total(key) / max(total('event_to_decided'), 1):.1f}"

    note = (
        f"{len(SERVICES) * len(METRICS)} series; this build: sent {total('sent'):,}, scored"
        f" {total('scored'):,} (unscored {total('sent') - total('scored')}), 429s {total('throttled')}"
    )
    soak_s = float(os.environ.get("SELFHEAL_BENCH_SOAK_S", "20"))
    offered = float(np.median([r["offered"] for r in this]))
    soak = f"soak {soak_s:.0f}s at {offered:,.0f} pts/s offered; median of per-round percentiles"
    return [
        row("engine points/s, HTTP push -> scored", "pts/s", "rates", target=">= baseline", note=note),
        Row("PyOD decision_function alone (pts/s equiv.)", "pts/s", per_round(this, "pyod", None),
            note="detector ceiling"),
        row("engine CPU per point (all engine processes)", "us", "cpu_per_point", higher_is_better=False),
        row("arrival -> anomaly event p50", "ms", "arrival_to_event", 50, higher_is_better=False,
            note=f"{total('arrival_to_event')} events; {soak}"),
        row("arrival -> anomaly event p99", "ms", "arrival_to_event", 99, higher_is_better=False),
        row("anomaly -> action dispatch p50", "ms", "event_to_dispatch", 50, higher_is_better=False,
            note=f"{total('event_to_dispatch')} dispatches, {total('dispatched')} received by the target"),
        Row("anomaly -> policies' decisions handed to the writer p99", "ms",
            per_round(this, "event_to_decided", 99), higher_is_better=False,
            note="events, diagnosis and durable-rules on the engine's interpreter"),
        Row("decided tick: events made -> policies asked p50", "ms", per_round(this, "event_to_policies", 50),
            higher_is_better=False, note="the diagnosis' window and roots (its signatures run with scoring)"),
        Row("decided tick: events made -> policies asked p99", "ms", per_round(this, "event_to_policies", 99),
            higher_is_better=False),
        Row("decided tick: the policies p50", "ms", per_round(this, "policies", 50), higher_is_better=False,
            note=f"{per_tick('event_to_journaled')} decisions and {per_tick('event_to_dispatch')} dispatches"
            " a decided tick"),
        Row("decided tick: the policies p99", "ms", per_round(this, "policies", 99), higher_is_better=False),
        Row("decided tick waits for the writer thread p50", "ms", per_round(this, "writer_wait", 50),
            higher_is_better=False, note="the previous commit, then the interpreter"),
        Row("decided tick waits for the writer thread p99", "ms", per_round(this, "writer_wait", 99),
            higher_is_better=False),
        Row("journal commit (SQL + one fsync) p50", "ms", per_round(this, "commit", 50),
            higher_is_better=False, note=f"{total('commit')} commits (ticks, outcomes and verdicts batched)"),
        Row("journal commit (SQL + one fsync) p99", "ms", per_round(this, "commit", 99),
            higher_is_better=False),
        Row("decided tick: its commit p50", "ms", per_round(this, "decided_commit", 50),
            higher_is_better=False,
            note=f"{total('decided_commit')} commits holding decisions (events, decisions, executions)"),
        Row("decided tick: its commit p99", "ms", per_round(this, "decided_commit", 99),
            higher_is_better=False),
        row("anomaly -> decision + execution journaled p99", "ms", "event_to_journaled", 99,
            higher_is_better=False),
        Row("execution handed to the actuator pool -> its thread runs p50", "ms",
            per_round(this, "actuator_wait", 50), higher_is_better=False,
            note="one pool thread per execution, each woken to take the interpreter"),
        Row("execution handed to the actuator pool -> its thread runs p99", "ms",
            per_round(this, "actuator_wait", 99), higher_is_better=False),
        row("anomaly -> action dispatch p99", "ms", "event_to_dispatch", 99, higher_is_better=False,
            target="< 10"),
        Row("PolicyHost decisions/s", "events/s", ours, "durable-rules raw post/s", raw),
        Row("RSS end of soak (this build)", "MiB", [r["rss"][1] for r in this], "RSS at soak start",
            [r["rss"][0] for r in this], higher_is_better=False, target="flat"),
    ]  # fmt: skip


BENCHMARKS = [bench_engine]


if __name__ == "__main__":
    if sys.argv[1:] == ["--admin"]:
        _admin_main()
    elif len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(_measure(int(sys.argv[2]), float(sys.argv[3]))))
    elif len(sys.argv) == 6 and sys.argv[1] == "--generate":
        _generate(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        from harness import render

        print(render(bench_engine(int(os.environ.get("SELFHEAL_BENCH_REPEATS", "3")))))
