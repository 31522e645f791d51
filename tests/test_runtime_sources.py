"""Configuration and sources: strict settings, point validation, back-pressure, file tail, scrape."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_runtime_support import TOKEN, AdminServer, fit_pipeline, ndjson, points, wait_for, write_rules

from engine.errors import ConfigError, SpecError
from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import build_engine, serve_in_thread
from engine.runtime.sources import IngestQueue, PromMapping
from engine.telemetry.points import PointError, parse_body, parse_point

T0 = 1_700_000_000.0  # in the past: points more than 10 minutes ahead are refused


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


# ------------------------------------------------------------------------------------ settings


def test_unknown_keys_fail_with_a_hint(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text("tick: 1\nlimits: {max_concurent: 2}\nport: eighty\n")
    with pytest.raises(SpecError) as info:
        load_settings(cfg, environ={})
    text = str(info.value)
    assert "3 problem(s)" in text
    assert f"{cfg}: unknown key 'tick' (did you mean 'tick_s'?)" in text
    assert "limits: unknown key 'max_concurent' (did you mean 'max_concurrent'?)" in text
    assert f"{cfg}: port:" in text


def test_environment_overrides_the_file_and_unknown_variables_fail(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text("port: 9000\ntoken: from-the-file\n")
    settings = load_settings(
        cfg, environ={"SELFHEAL_ENGINE_PORT": "9100", "SELFHEAL_ENGINE_TOKEN": "from-env-123"}
    )
    assert (settings.port, settings.token) == (9100, "from-env-123")
    with pytest.raises(ConfigError, match="SELFHEAL_ENGINE_TOKN names no engine setting") as info:
        load_settings(cfg, environ={"SELFHEAL_ENGINE_TOKN": "x"})
    assert info.value.hint == "did you mean 'token'?"


def test_binding_beyond_loopback_needs_a_token() -> None:
    settings = load_settings(overrides={"host": "0.0.0.0"}, environ={})
    with pytest.raises(ConfigError, match="not loopback and no token"):
        settings.require_safe_binding("engine.yaml")
    load_settings(overrides={"host": "0.0.0.0", "token": TOKEN}, environ={}).require_safe_binding("x")
    with pytest.raises(SpecError, match="at least 8 characters"):
        load_settings(overrides={"token": "short"}, environ={})


# ------------------------------------------------------------------------------------ points


NAMES = st.text(
    st.characters(
        exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"), include_characters=" "
    ),
    min_size=1,
    max_size=20,
)


@given(
    ts=st.floats(min_value=1.0, max_value=1.7e9),
    service=NAMES,
    metric=NAMES,
    value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**12), 10**12),
)
def test_valid_points_parse_and_each_broken_field_is_named(
    ts: float, service: str, metric: str, value: Any
) -> None:
    good = {"ts": ts, "service": service, "metric": metric, "value": value}
    assert parse_point(good) == (float(ts), service, metric, float(value))
    for field, broken in (("ts", "soon"), ("service", ""), ("metric", 3), ("value", "1.0")):
        with pytest.raises(PointError) as info:
            parse_point({**good, field: broken})
        assert info.value.field == field
    for field in good:
        with pytest.raises(PointError) as info:
            parse_point({k: v for k, v in good.items() if k != field})
        assert info.value.field == field and info.value.reason == "is missing"


def test_nan_bool_and_iso_timestamps() -> None:
    base = {"ts": "2023-11-14T22:13:20Z", "service": "s", "metric": "m", "value": 1}
    assert parse_point(base)[0] == 1_700_000_000.0
    with pytest.raises(PointError, match="finite"):
        parse_point({**base, "value": float("nan")})
    with pytest.raises(PointError, match="got bool"):
        parse_point({**base, "value": True})
    good, bad = parse_body(b'{"ts": 1e9, "service": "s", "metric": "m", "value": 1}\n{"ts": 1e9}\n')
    assert len(good) == 1 and [b.field for b in bad] == ["service"]


@pytest.mark.parametrize("ts", [T0 * 1000, 1e11, 0.0, -5.0, 4e9, "2099-01-01T00:00:00Z"])
def test_millisecond_and_future_timestamps_are_refused_by_field(ts: Any) -> None:
    now = T0 + 3600
    with pytest.raises(PointError) as info:
        parse_point({"ts": ts, "service": "s", "metric": "m", "value": 1.0}, now)
    assert info.value.field == "ts" and "epoch seconds, not milliseconds" in info.value.reason
    assert parse_point({"ts": now + 599.0, "service": "s", "metric": "m", "value": 1.0}, now)[0] == now + 599
    good, bad = parse_body(
        json.dumps(
            [{"ts": 1e9, "service": "s", "metric": "m", "value": 1.0}] * 2
            + [{"ts": time.time() * 1000, "service": "s", "metric": "m", "value": 1.0}]
        ).encode()
    )
    assert len(good) == 2 and [(r.index, r.field) for r in bad] == [(2, "ts")]


def test_queue_accepts_whole_batches_or_nothing() -> None:
    q = IngestQueue(max_points=10)
    batch = [(1.0, "s", "m", 1.0)] * 6
    assert q.offer(batch)
    assert not q.offer(batch)  # 12 > 10: refused whole
    assert q.offer(batch[:4]) and q.depth == 10
    taken = q.take(max_points=100, timeout=0)
    assert [len(b) for _, b in taken] == [6, 4] and q.depth == 0
    assert q.offer([(1.0, "s", "m", 1.0)] * 50)  # an empty queue takes any batch (no livelock)


def test_the_door_queues_counts_and_dead_letters_without_threads(tmp_path: Path) -> None:
    """A push to a full queue is refused whole (429) and counted; a waiting source gives up when
    the engine stops its sources; refusals are counted by field and dead-lettered."""
    from engine.runtime.intake import DeadLetter, Door, Intake
    from engine.runtime.metrics import EngineMetrics, EngineState
    from engine.telemetry.points import Rejection

    settings = load_settings(overrides={"max_series": 1}, environ={})
    metrics = EngineMetrics(lambda: EngineState(0, False, 0, None, 0.5, {}, {}, {}))
    dead = DeadLetter.from_settings(tmp_path / "dead.ndjson", settings)
    stop = threading.Event()
    door = Door(Intake(settings, metrics.registry), IngestQueue(4), dead, metrics, stop=stop)
    bad = Rejection(0, "value", "non_finite_value", "must be finite", {"value": "NaN"})
    assert door.offer([(T0, "a", "m", 0.0)], [], "http") == (1, [])  # the one series the cap holds
    batch = [(T0, "a", "m", 1.0)] * 2 + [(T0, "b", "m", 1.0)]  # b: a second series, over the cap
    accepted = door.offer(batch, [bad], "http")
    assert accepted is not None and accepted.points == 2
    assert [r.code for r in accepted.rejections] == ["non_finite_value", "series_limit"]
    assert door.offer([(T0, "a", "m", 2.0)] * 2, [], "http") is None  # 3 + 2 > 4: nothing taken
    assert door.queue.depth == 3
    sample = metrics.registry.get_sample_value
    assert sample("selfheal_requests_throttled_total") == 1
    assert sample("selfheal_points_in_total", {"source": "http"}) == 3
    assert sample("selfheal_points_rejected_total", {"source": "http", "field": "service"}) == 1
    codes = [json.loads(line)["code"] for line in dead.path.read_text().splitlines()]
    assert codes == ["non_finite_value", "series_limit"]
    stop.set()  # the queue is still full: a file tail's sink returns False instead of waiting
    assert door.sink("file:x")([(T0, "a", "m", 3.0)] * 2, []) is False
    assert sample("selfheal_points_in_total", {"source": "file:x"}) is None


# ------------------------------------------------------------------------------------ engines


@pytest.fixture
def make_engine(tmp_path: Path, pipeline: Any) -> Iterator[Any]:
    running: list[Any] = []
    admin = AdminServer().__enter__()

    def make(start_engine: bool = True, **overrides: Any) -> Any:
        rules = write_rules(tmp_path / "rules", admin.url)
        settings = load_settings(
            overrides={"port": 0, "token": TOKEN, "tick_s": 0.01, **overrides}, environ={}
        )
        engine = build_engine(assemble(pipeline, rules), settings, tmp_path / "journals")
        server = serve_in_thread(engine, start_engine=start_engine)
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop()
    admin.__exit__()


def test_full_queue_answers_429_and_loses_nothing_accepted(make_engine: Any) -> None:
    server = make_engine(start_engine=False, queue_max_points=100)
    body = ndjson(points("gateway", T0, 40))  # 80 points
    first = httpx.post(f"{server.url}/v1/telemetry", content=body)
    assert first.status_code == 202
    second = httpx.post(f"{server.url}/v1/telemetry", content=body)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    assert httpx.get(f"{server.url}/readyz").status_code == 503  # not started: not ready
    server.engine.start()
    wait_for(lambda: server.engine.points_scored == 80)
    third = httpx.post(f"{server.url}/v1/telemetry", content=ndjson(points("gateway", T0 + 40, 40)))
    assert third.status_code == 202
    wait_for(lambda: server.engine.points_scored == 160)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "selfheal_requests_throttled_total 1.0" in metrics
    assert 'selfheal_points_in_total{source="http"} 160.0' in metrics


def test_push_is_refused_when_the_http_source_is_off(make_engine: Any) -> None:
    server = make_engine(start_engine=False, sources={"http": False})
    r = httpx.post(f"{server.url}/v1/telemetry", content=ndjson(points("gateway", T0, 2)))
    assert r.status_code == 404 and "sources.http" in r.json()["detail"]
    assert server.engine.queue.depth == 0 and httpx.get(f"{server.url}/healthz").status_code == 200


def test_oversized_body_is_refused_by_its_content_length_before_it_is_read(make_engine: Any) -> None:
    server = make_engine(start_engine=False, max_request_bytes=1000)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:  # announces 1 GB, sends none
        sock.sendall(
            b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        head = b""
        while b"max_request_bytes" not in head and (chunk := sock.recv(4096)):
            head += chunk
    assert head.startswith(b"HTTP/1.1 413") and b"max_request_bytes" in head
    small = httpx.post(f"{server.url}/v1/telemetry", content=ndjson(points("gateway", T0, 2)))
    assert small.status_code == 202
    big = httpx.post(f"{server.url}/v1/telemetry", content=ndjson(points("gateway", T0, 20)))
    assert big.status_code == 413 and server.engine.queue.depth == 4


def test_ndjson_file_is_tailed_with_bad_lines_dead_lettered(make_engine: Any, tmp_path: Path) -> None:
    feed = tmp_path / "feed.ndjson"
    feed.write_text(ndjson(points("gateway", T0, 5)).decode() + "garbage\n")
    server = make_engine(sources={"files": [str(feed)], "from_start": True})
    wait_for(lambda: server.engine.points_scored == 10)
    with feed.open("a") as fh:  # appended later: followed like tail -F
        fh.write(ndjson(points("gateway", T0 + 5, 3)).decode())
    wait_for(lambda: server.engine.points_scored == 16)
    dead = [json.loads(x) for x in server.engine.dead_letter.path.read_text().splitlines()]
    assert [(d["source"], d["field"]) for d in dead] == [(f"file:{feed}", "line")]
    assert server.engine.observations.metrics[("gateway", "memory_util")][0] == pytest.approx(0.5, abs=0.01)


PROM_TEXT = """# HELP vllm_memory Memory in use.
# TYPE vllm_memory gauge
vllm_memory{model="llama",instance="a"} 0.61
vllm_memory{model="llama",instance="b"} 0.99
# TYPE vllm_latency_seconds summary
vllm_latency_seconds{quantile="0.99",instance="a"} 0.25
vllm_latency_seconds{quantile="0.5",instance="a"} 0.05
vllm_latency_seconds_count{instance="a"} 10
"""


def test_prometheus_scrape_maps_names_and_labels(make_engine: Any, tmp_path: Path) -> None:
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PROM_TEXT.encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    target = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    mapping = tmp_path / "vllm.yaml"
    mapping.write_text(
        "service: inference-a\n"
        "metrics:\n"
        "  vllm_memory: {metric: memory_util, match: {instance: a}}\n"
        "  vllm_latency_seconds: {metric: latency_p99_ms, scale: 1000, match: {quantile: '0.99'}}\n"
    )
    assert PromMapping.from_yaml(mapping).convert(PROM_TEXT, T0) == (
        [(T0, "inference-a", "memory_util", 0.61), (T0, "inference-a", "latency_p99_ms", 250.0)],
        [],
    )
    broken = PROM_TEXT + 'vllm_memory{instance="a"} NaN\nvllm_memory{instance="a" 0.5\n'
    points, refused = PromMapping.from_yaml(mapping).convert(broken, T0)
    assert len(points) == 2  # the good samples of a scrape with a bad line or a NaN are kept
    assert [(r.where, r.field, r.code) for r in refused] == [
        ("line 9", "value", "non_finite_value"),
        ("line 10", "line", "malformed_line"),
    ]
    url = f"http://127.0.0.1:{target.server_address[1]}/metrics"
    try:
        server = make_engine(
            sources={"prometheus": [{"url": url, "interval_s": 0.1, "mapping": str(mapping)}]}
        )
        wait_for(lambda: server.engine.points_scored >= 4)
        assert server.engine.observations.metrics[("inference-a", "latency_p99_ms")][0] == 250.0
        assert (
            f'selfheal_points_in_total{{source="prometheus:{url}"}}'
            in httpx.get(f"{server.url}/metrics").text
        )
    finally:
        target.shutdown()
        target.server_close()


def test_sigterm_like_stop_drains_what_was_accepted(make_engine: Any) -> None:
    server = make_engine(start_engine=False)
    body = ndjson(points("gateway", T0, 500))
    assert httpx.post(f"{server.url}/v1/telemetry", content=body).status_code == 202
    server.engine.start()
    started = time.monotonic()
    server.stop()  # what SIGTERM does after uvicorn stops accepting
    assert server.engine.points_scored == 1000 and time.monotonic() - started < 10


def test_stdin_is_read_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from engine.runtime.sources import tail_ndjson

    text = (
        ndjson(points("gateway", T0, 3)).decode()
        + '{"ts": 1}\n'
        + ndjson(points("gateway", T0 + 3, 1)).decode()
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(text.rstrip("\n")))  # last line without newline
    got: list[Any] = []
    bad: list[Any] = []
    tail_ndjson("-", lambda g, b: got.extend(g) or bad.extend(b) or True, threading.Event(), batch_lines=2)
    assert len(got) == 8 and [b.field for b in bad] == ["service"]


# ------------------------------------------------------------------------------------ hostile input

GOOD = {"ts": T0, "service": "gateway", "metric": "memory_util", "value": 0.5}
DEEP = "[" * 1200 + "]" * 1200
HOSTILE = [  # (the raw JSON of one point, the field it must be refused by, its code)
    ('{"ts": 1.0, "service": "\\ud800-x", "metric": "m", "value": 1}', "service", "invalid_service"),
    ('{"ts": 1.0, "service": "s", "metric": "a\\u0007", "value": 1}', "metric", "invalid_metric"),
    ('{"ts": 1.0, "service": "' + "s" * 300 + '", "metric": "m", "value": 1}', "service", "invalid_service"),
    ('{"ts": 1.0, "service": "s", "metric": "m", "value": 1' + "0" * 309 + "}", "value", "non_finite_value"),
    ('{"ts": 1.0, "service": "s", "metric": "m", "value": 1' + "0" * 4301 + "}", "value", "non_finite_value"),
    ('{"ts": 1' + "0" * 400 + ', "service": "s", "metric": "m", "value": 1}', "ts", "ts_out_of_range"),
    ('{"ts": 1.0, "service": "s", "metric": "m", "value": 1e400}', "value", "non_finite_value"),
    ('{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "x": ' + DEEP + "}", "line", "malformed_line"),
    (DEEP, "line", "malformed_line"),
    ('{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "labels": 5}', "labels", "malformed_labels"),
]


@pytest.mark.parametrize(
    ("raw", "field", "code"), HOSTILE, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(HOSTILE)]
)
@pytest.mark.parametrize("shape", ["ndjson", "array", "points"])
def test_a_hostile_point_is_refused_by_its_field_and_the_rest_of_the_body_is_kept(
    raw: str, field: str, code: str, shape: str
) -> None:
    good = [json.dumps({**GOOD, "ts": T0 + i}) for i in range(3)]
    items = [good[0], raw, *good[1:]]
    if shape == "ndjson":
        body, content_type = "\n".join(items), "application/x-ndjson"
    elif shape == "array":
        body, content_type = "[" + ",".join(items) + "]", "application/json"
    else:
        body, content_type = '{"points": [' + ", ".join(items) + "]}", "application/json"
    points, bad = parse_body(body.encode(), content_type)
    assert [p[0] for p in points] == [T0, T0 + 1, T0 + 2]
    expected_field = "point" if field == "line" and shape != "ndjson" else field
    assert [(r.index, r.field, r.code) for r in bad] == [(1, expected_field, code)]
    assert bad[0].where == ("line 2" if shape == "ndjson" else "point 1")


def test_a_lone_surrogate_or_a_huge_number_is_a_400_naming_line_and_field_and_metrics_stay_up(
    make_engine: Any,
) -> None:
    """Issue 18: a surrogate service name was accepted (202) and then broke /metrics for good; an
    integer of 309+ or 4,301+ digits or JSON nested 1,000 deep was a 500 losing the whole body."""
    server = make_engine()
    url = f"{server.url}/v1/telemetry"
    for raw, field, _ in HOSTILE[:6] + HOSTILE[7:9]:
        for content_type in ("application/x-ndjson", "application/json"):
            body = "\n".join([json.dumps({**GOOD, "ts": T0}), raw.replace("1.0", str(T0))])
            r = httpx.post(url, content=body, headers={"content-type": content_type})
            assert r.status_code == 400, (raw[:60], r.text[:200])
            assert r.json()["accepted"] == 1 and r.json()["rejected"] == 1
            assert r.json()["detail"].startswith(f"line 2: field '{field}'")
    surrogate = ndjson([{**GOOD, "service": "\ud800-x", "value": 1e6} for _ in range(5)])
    assert httpx.post(url, content=surrogate).status_code == 400
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    dead = server.engine.dead_letter.path.read_text(encoding="utf-8")
    assert "\\ud800-x" in dead and len(dead.splitlines()) == 16 + 5


def _raw_post(url: str, head: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n" + head)
    return sock


def _response(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_chunked_body_is_refused_while_it_streams_not_after_it_was_read_whole(make_engine: Any) -> None:
    """Issue 18: a 256 MiB chunked POST (no Content-Length) was read whole before its 413."""
    server = make_engine(start_engine=False, max_request_bytes=100_000)
    line = json.dumps({**GOOD, "ts": T0}).encode() + b"\n"
    chunk = line * (65536 // len(line))
    sock = _raw_post(server.url, b"Transfer-Encoding: chunked\r\n\r\n")
    sent = 0
    try:
        while sent < 64 * 2**20:  # offer 64 MiB; the server must stop reading long before
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:  # the server answered and closed the connection: what we want
        pass
    head = _response(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 413") and b"max_request_bytes" in head
    assert sent < 16 * 2**20  # what socket buffers absorbed, not the whole body
    assert server.engine.queue.depth == 0


def test_a_slow_body_is_cut_off_after_the_read_timeout(make_engine: Any) -> None:
    """Issue 18: a sender trickling its body (slowloris) held its connection forever."""
    server = make_engine(start_engine=False, body_read_timeout_s=0.5)
    sock = _raw_post(server.url, b"Content-Length: 1000\r\n\r\n" + b'{"ts": 1')
    started = time.monotonic()
    head = _response(sock)  # returns when the server closes the connection
    sock.close()
    assert head.startswith(b"HTTP/1.1 408") and b"body_read_timeout_s" in head
    assert time.monotonic() - started < 5
    ok = httpx.post(f"{server.url}/v1/telemetry", content=ndjson([GOOD]))
    assert ok.status_code == 202


def _metric(server: Any, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("workers", [0, 1])
def test_new_series_beyond_the_cap_are_refused_and_idle_ones_are_forgotten(
    make_engine: Any, workers: int
) -> None:
    """Issue 18: 100k invented service names cost ~235 MiB, never freed."""
    server = make_engine(max_series=4, series_idle_s=2.0, workers=workers)
    url = f"{server.url}/v1/telemetry"
    known = points("gateway", T0, 3) + points("vector-db", T0, 3)  # 2 services x 2 metrics
    assert httpx.post(url, content=ndjson(known)).status_code == 202
    body = ndjson(points("gateway", T0 + 3, 2) + points("intruder", T0, 3))
    r = httpx.post(url, content=body)
    assert r.status_code == 400 and r.json()["accepted"] == 4 and r.json()["rejected"] == 6
    assert r.json()["detail"].startswith("new series: field 'service' 'intruder'/")
    assert {e["code"] for e in r.json()["errors"]} == {"series_limit"}
    assert _metric(server, "selfheal_series_refused_total") == 6
    assert _metric(server, "selfheal_series") == 4
    wait_for(lambda: server.engine.points_scored == 16)
    assert {s for s, _ in server.engine.observations.metrics} == {"gateway", "vector-db"}
    # Nothing more from either service: after series_idle_s both are forgotten, their state freed.
    wait_for(lambda: _metric(server, "selfheal_series") == 0, timeout=10)
    wait_for(lambda: not server.engine.observations.metrics and not server.engine.observations.scores)
    assert not server.engine.events.attribution.base
    if workers == 0:
        assert not server.engine.scoring.states
    assert _metric(server, "selfheal_series_evicted_total") == 4
    assert httpx.post(url, content=ndjson(points("intruder", T0, 3))).status_code == 202
    wait_for(lambda: ("intruder", "memory_util") in server.engine.observations.metrics)
    wait_for(lambda: server.engine.points_scored == 22)  # the workers took the eviction and go on
    assert server.engine.healthy


def test_the_dead_letter_file_caps_each_input_and_rotates(tmp_path: Path) -> None:
    """Issue 18: the dead-letter file kept every refused input whole, without rotation."""
    from engine.runtime.intake import DeadLetter
    from engine.telemetry.points import Rejection

    path = tmp_path / "dead-letter.ndjson"
    dead = DeadLetter(path, max_bytes=20_000, files=2, raw_bytes=100)
    huge = Rejection(0, "service", "invalid_service", "is too long", "x" * 2**20)
    small = Rejection(1, "value", "non_finite_value", "must be finite", {"value": "NaN"})
    for _ in range(200):
        dead.write("http", [huge, small])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["dead-letter.ndjson", "dead-letter.ndjson.1", "dead-letter.ndjson.2"]
    assert all((tmp_path / f).stat().st_size <= 20_000 for f in files)
    first, second = (json.loads(line) for line in path.read_text().splitlines()[-2:])
    assert len(first["raw"]) == 100 and first["raw_truncated"] == 2**20
    assert (first["where"], first["field"], first["code"]) == ("line 1", "service", "invalid_service")
    assert second["raw"] == {"value": "NaN"} and "raw_truncated" not in second


def test_hostile_bodies_leave_the_dead_letter_bounded(make_engine: Any) -> None:
    server = make_engine(start_engine=False, dead_letter_max_bytes=200_000, dead_letter_files=1)
    name = "s" * 2**20  # three requests of 1 MiB names used to add 90 MiB
    for _ in range(30):
        body = ndjson([{**GOOD, "service": name, "metric": f"m{i}"} for i in range(10)])
        assert httpx.post(f"{server.url}/v1/telemetry", content=body).status_code == 400
    path = server.engine.dead_letter.path
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    assert total <= 2 * 200_000
