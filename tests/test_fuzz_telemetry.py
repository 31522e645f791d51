"""Fuzzing the engine's telemetry endpoint over HTTP (Hypothesis, bounded for CI).

Issue 18: hostile bodies answered 500 and lost the valid points beside them. Any body of good and
hostile NDJSON lines must get a 2xx or 4xx with counts: every good line accepted and scored, every
hostile line refused alone and named by its line, never a 500.
"""

from __future__ import annotations

import json
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
