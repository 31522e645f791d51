"""The columnar fast path for large NDJSON bodies: same points as the line parser, or no fast path."""

from __future__ import annotations

import json
import pickle
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_runtime_support import T0, fit_pipeline, ndjson, service_points, wait_for, write_rules

from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import build_engine
from engine.telemetry.columns import MIN_BYTES, PointColumns
from engine.telemetry.points import parse_body, parse_lines

NDJSON = "application/x-ndjson"


def _line(ts: float, service: str = "svc", metric: str = "m", value: Any = 1.5) -> str:
    return json.dumps({"ts": ts, "service": service, "metric": metric, "value": value})


def _padding(n: int = 80) -> list[str]:
    """Enough well-formed lines that the body is past the fast path's size floor."""
    return [_line(T0 + i, f"pad-{i % 3}", "cpu", i * 0.25) for i in range(n)]


def _by_line_parser(body: bytes) -> tuple[list[Any], list[tuple[int, str, str]]]:
    good, bad = parse_lines(body.decode("utf-8", errors="replace").splitlines())
    return good, [(r.index, r.field, r.code) for r in bad]


# A line that is a valid point, or one of the ways a line goes wrong (each the line parser refuses
# or reads differently from a typed columnar reader).
_valid = st.builds(
    _line,
    ts=st.floats(min_value=1.0, max_value=T0) | st.integers(1, int(T0)),
    service=st.text(min_size=1, max_size=8),
    metric=st.text(min_size=1, max_size=8),
    value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**15), 10**15),
)
_broken = st.sampled_from(
    [
        "",  # blank line
        "   ",
        '{"ts": 1.0, "service": "s", "metric": "m"}',  # missing field
        '{"ts": 1.0, "service": "s", "metric": "m", "value": true}',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": "3"}',
        '{"ts": 1.0, "service": 5, "metric": "m", "value": 3}',
        '{"ts": 1.0, "service": {"a": 1}, "metric": "m", "value": 3}',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": NaN}',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": null}',
        '{"ts": 1.0, "service": "", "metric": "m", "value": 3}',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "value": 2}',  # duplicate key
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1} {"ts": 2.0, "service": "s", "metric": "m",'
        ' "value": 2}',  # two objects on one line
        '{"ts": 1.0, "service": "a\tb", "metric": "m", "value": 1}',  # raw tab inside a string
        '{"ts": 1.0, "service": "a\\ud800", "metric": "m", "value": 1}',  # lone surrogate
        '{"ts": "2023-11-14T22:13:20Z", "service": "s", "metric": "m", "value": 1}',
        '{"ts": 1e13, "service": "s", "metric": "m", "value": 1}',  # milliseconds
        '{"ts": 0, "service": "s", "metric": "m", "value": 1}',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1e400}',
        "[1, 2]",
        '{"ts": 1.0, "serv',
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "extra": {"x": [1]}}',  # valid
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1' + "0" * 309 + "}",  # beyond a double
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1' + "0" * 4301 + "}",  # beyond int()
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "x": ' + "[" * 1100 + "]" * 1100 + "}",
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "labels": "x"}',  # malformed labels
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1, "labels": {"a": "b"}}',  # valid
        '{"ts": 1.0, "service": "s\\u0001", "metric": "m", "value": 1}',  # an escaped control character
        '{"ts": 1.0, "service": "' + "s" * 257 + '", "metric": "m", "value": 1}',  # a name too long
        '{"timestamp": 1.0, "service": "s", "metric": "m", "value": 1}',  # the alias of ts
        '{"ts": 1.0, "service": "a{b", "metric": "m", "value": 1}',  # a bracket inside a string
    ]
)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_valid | _broken, max_size=12), trailing_newline=st.booleans())
@example(  # found by this test: a blank line and a line of two objects cancel in a line count
    lines=[
        "",
        '{"ts": 1.0, "service": "s", "metric": "m", "value": 1} {"ts": 2.0, "service": "s", "metric": "m",'
        ' "value": 2}',
    ],
    trailing_newline=False,
)
def test_the_fast_path_accepts_exactly_what_the_line_parser_accepts(
    lines: list[str], trailing_newline: bool
) -> None:
    body = ("\n".join(_padding() + lines) + ("\n" if trailing_newline else "")).encode()
    good, bad = parse_body(body, NDJSON)
    expected_good, expected_bad = _by_line_parser(body)
    assert list(good) == expected_good
    assert [(r.index, r.field, r.code) for r in bad] == expected_bad
    if isinstance(good, PointColumns):
        assert not expected_bad


def test_a_large_well_formed_body_takes_the_fast_path_and_a_small_one_does_not() -> None:
    body = ndjson(list(service_points(T0, 20)))
    assert len(body) > MIN_BYTES
    good, bad = parse_body(body, NDJSON)
    assert isinstance(good, PointColumns) and not bad and len(good) == 20 * 4 * 2
    assert list(good) == _by_line_parser(body)[0]
    small, _ = parse_body(ndjson(list(service_points(T0, 1))), NDJSON)
    assert isinstance(small, list)
    assert isinstance(parse_body(body, "application/json")[0], list)  # JSON bodies: the general parser


def test_invalid_utf8_goes_to_the_line_parser() -> None:
    """Arrow's reader passes invalid UTF-8 through; the line parser replaces it (and never crashes)."""
    body = b"\n".join(
        [
            *(line.encode() for line in _padding()),
            b'{"ts": 1.0, "service": "a\xff", "metric": "m", "value": 1}',
        ]
    )
    good, bad = parse_body(body, NDJSON)
    assert isinstance(good, list) and not bad and good[-1][1] == "a\ufffd"
    assert good == _by_line_parser(body)[0]


def test_a_future_timestamp_sends_the_body_to_the_line_parser_which_names_it() -> None:
    future = _line(time.time() + 3600)
    body = "\n".join([*_padding(), future]).encode()
    good, bad = parse_body(body, NDJSON)
    assert isinstance(good, list) and len(good) == 80
    assert [(r.index, r.field) for r in bad] == [(80, "ts")] and "in the future" in bad[0].reason


def test_split_partitions_like_the_list_path_and_keeps_each_series_in_order() -> None:
    body = ndjson(list(service_points(T0, 30)))
    columns, _ = parse_body(body, NDJSON)
    assert isinstance(columns, PointColumns)
    shard_of: dict[str, int] = {}
    parts = columns.split(shard_of, 3)
    expected: list[list[Any]] = [[], [], []]
    for point in _by_line_parser(body)[0]:
        expected[zlib.crc32(point[1].encode()) % 3].append(point)
    assert [list(p) if p is not None else [] for p in parts] == expected
    assert shard_of == {s: zlib.crc32(s.encode()) % 3 for s in {p[1] for p in columns}}


def test_columns_pickle() -> None:
    columns, _ = parse_body(ndjson(list(service_points(T0, 30))), NDJSON)
    assert isinstance(columns, PointColumns)
    assert list(pickle.loads(pickle.dumps(columns))) == list(columns)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_engine_scores_columns_as_it_scores_lists(tmp_path: Path, workers: int) -> None:
    """The same feed as columns and as a list: same feature rows, scores and latest metrics."""
    pipeline = fit_pipeline()
    body = ndjson(list(service_points(T0, 90)))
    columns, _ = parse_body(body, NDJSON)
    assert isinstance(columns, PointColumns)
    outcome = []
    for feed in (columns, _by_line_parser(body)[0]):
        settings_ = load_settings(overrides={"port": 0, "tick_s": 0.01, "workers": workers}, environ={})
        rules = write_rules(tmp_path / f"rules-{len(outcome)}", "http://127.0.0.1:9")
        engine = build_engine(assemble(pipeline, rules), settings_, tmp_path / f"j-{len(outcome)}")
        engine.start()
        try:
            assert engine.ingest(feed)
            wait_for(lambda e=engine: e.points_scored == len(body.splitlines()), timeout=60)
        finally:
            engine.stop()  # drains: results of the last tick are in (points are counted first)
        scores = {s: round(v[0], 9) for s, v in engine.observations.scores.items()}
        metrics = {k: v[0] for k, v in engine.observations.metrics.items()}
        outcome.append((engine.rows_scored, scores, metrics))
    assert outcome[0][0] > 0 and outcome[0] == outcome[1]
