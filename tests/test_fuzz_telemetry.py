"""Fuzzing the engine's telemetry endpoint over HTTP (Hypothesis, bounded for CI).

Issue 18: hostile bodies answered 500 and lost the valid points beside them. Any body of good and
hostile NDJSON lines must get a 2xx or 4xx with counts: every good line accepted and scored, every
hostile line refused alone and named by its line, never a 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime_support import TOKEN, AdminServer, fit_pipeline, points, wait_for, write_rules

from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import build_engine, serve_in_thread

T0 = 1_700_000_000.0
GOOD = points("fuzz", T0, 200)  # 400 distinct valid points, handed out in order
SEPARATORS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where a body's lines may be split

_base = {"ts": T0, "service": "fuzz", "metric": "memory_util", "value": 1.0}
_hostile_values: dict[str, list[str]] = {
    "ts": ['"nope"', "-1", "1e300", "null", "[]", "{}", "true", '"2026-13-45T99:00:00"', "9" * 400],
    "service": ['"\\ud800-x"', '""', json.dumps("s" * 300), "5", '"a\\u0000b"', '"\\u202e"', "null"],
    "metric": ['"\\udfff"', "[]", json.dumps("m" * 300), "false"],
    "value": ["NaN", "Infinity", "-Infinity", "1e400", "9" * 400, "9" * 5000, '"1"', "null", "true"],
}


def _field_broken(field: str, raw: str) -> str:
    fields = {k: json.dumps(v) for k, v in _base.items()}
    fields[field] = raw
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


_one_field = st.sampled_from(sorted(_hostile_values)).flatmap(
    lambda f: st.sampled_from(_hostile_values[f]).map(lambda raw: _field_broken(f, raw))
)
_deep = st.integers(900, 3000).map(lambda n: '{"ts": ' + "[" * n + "]" * n + "}")
_text = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() and not any(c in SEPARATORS for c in s))
_structure = st.sampled_from(
    ['{"ts": 1', "[1, 2]", '"just a string"', "{} {}", json.dumps(_base) + " " + json.dumps(_base), "{"]
)
HOSTILE = st.one_of(_one_field, _deep, _text, _structure)
LINES = st.lists(st.one_of(st.just(None), HOSTILE), min_size=1, max_size=30)  # None: a good line


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    with AdminServer() as admin:
        rules = write_rules(tmp / "rules", admin.url)
        config = load_settings(overrides={"port": 0, "token": TOKEN, "tick_s": 0.01}, environ={})
        running = serve_in_thread(build_engine(assemble(fit_pipeline(), rules), config, tmp / "journals"))
        yield running
        running.stop()


def test_any_body_is_answered_with_counts_and_loses_no_good_line(server: Any) -> None:
    url = f"{server.url}/v1/telemetry"
    sent = {"good": 0}
    scored_before = server.engine.points_scored

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(LINES)
    def one_body(lines: list[str | None]) -> None:
        body: list[str] = []
        hostile: list[int] = []
        good = 0
        for line in lines:
            if line is None:
                if sent["good"] + good == len(GOOD):
                    continue
                body.append(json.dumps(GOOD[sent["good"] + good]))
                good += 1
            else:
                body.append(line)
                hostile.append(len(body))  # 1-based line number
        r = httpx.post(
            url, content="\n".join(body).encode(), headers={"content-type": "application/x-ndjson"}
        )
        assert r.status_code in (202, 400), r.text
        answer = r.json()
        sent["good"] += good
        if not hostile:
            assert r.status_code == 202 and answer == {"accepted": good}
            return
        assert r.status_code == 400
        assert (answer["accepted"], answer["rejected"]) == (good, len(hostile))
        assert [e["line"] for e in answer["errors"]] == hostile[:50]
        assert answer["detail"].startswith(f"line {hostile[0]}: field ")

    one_body()
    assert sent["good"] > 0
    wait_for(lambda: server.engine.points_scored == scored_before + sent["good"], timeout=30)
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200


def test_hostile_bytes_are_refused_by_line(server: Any) -> None:
    """Invalid UTF-8 and a NUL byte: refused by line, the good line beside them kept."""
    good = json.dumps({**_base, "ts": T0 + 500})
    body = b"\xff\xfe garbage\n" + good.encode() + b'\n{"ts": 1\x00}\n'
    r = httpx.post(f"{server.url}/v1/telemetry", content=body)
    assert r.status_code == 400 and (r.json()["accepted"], r.json()["rejected"]) == (1, 2)


FILE_GOOD = st.sampled_from(
    [
        '{"ts": 1700000000.5, "service": "a", "metric": "m", "value": 1.5}',
        '{"ts": 1700000000, "service": "a", "metric": "m", "value": 2, "labels": {"x": "1"}}',
        '{"timestamp": "2023-11-14T22:13:20Z", "service": "b", "metric": "m", "value": -3e2}',
        '{"ts": "2023-11-14 22:13:20.123456+01:00", "service": "b", "metric": "m", "value": 0}',
        '{"ts": 1700000000, "service": "a", "metric": "m", "value": 1, "labels": "{\\"y\\": 2}"}',
    ]
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(FILE_GOOD, HOSTILE, st.just("")), min_size=1, max_size=25))
def test_a_jsonl_file_and_the_engine_accept_and_refuse_the_same_lines(lines: list[str]) -> None:
    """One point parser: what ``selfheal ingest`` loads from a JSON-lines file is exactly what the
    engine accepts pushed, and each refused line has the same reason code in both."""
    import tempfile

    from engine.telemetry.points import parse_lines_in_full
    from engine.telemetry.readers import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "points.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        read = read_jsonl(path)
    pushed = parse_lines_in_full(lines)
    assert read.points["line"].to_list() == [i + 1 for i in pushed.lines]
    assert list(zip(read.rejects["line"], read.rejects["reason"], strict=True)) == [
        (r.index + 1, r.code) for r in pushed.rejections
    ]
    assert read.points["value"].to_list() == [p[3] for p in pushed.points]
