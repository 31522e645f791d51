"""Property: for any mix of good and bad CSV rows, every row ends in exactly one place — stored or
quarantined with its own line number and the reason it was built with."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.telemetry.readers import read_csv

GOOD = "2026-01-01 00:{m:02d}:{s:02d},svc,metric,{v}"
BAD = {
    "unparsable_ts": "2026-13-45 99:99:99,svc,metric,1",
    "non_numeric_value": "2026-01-01 00:00:00,svc,metric,twelve",
    "non_finite_value": "2026-01-01 00:00:00,svc,metric,-inf",
    "missing_service": "2026-01-01 00:00:00,,metric,1",
    "missing_metric": "2026-01-01 00:00:00,svc,,1",
    "missing_value": "2026-01-01 00:00:00,svc,metric,",
    "missing_ts": ",svc,metric,1",
}

rows = st.lists(
    st.one_of(st.just("good"), st.just("blank"), st.sampled_from(sorted(BAD))), min_size=1, max_size=40
)


@settings(max_examples=30, deadline=None)
@given(rows)
def test_every_row_is_stored_or_quarantined_with_its_line(kinds: list[str]) -> None:
    lines = ["ts,service,metric,value"]
    expected: list[tuple[int, str]] = []
    good = 0
    for i, kind in enumerate(kinds):
        if kind == "good":
            lines.append(GOOD.format(m=i // 60, s=i % 60, v=i * 0.5))
            good += 1
        elif kind == "blank":
            lines.append("")
        else:
            lines.append(BAD[kind])
            expected.append((len(lines), kind))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_text("\n".join(lines) + "\n")
        result = read_csv(path)
    assert result.points.height == good
    assert result.read == good + len(expected)
    assert list(zip(result.rejects["line"], result.rejects["reason"], strict=True)) == expected
    assert result.rejects["raw"].to_list() == [lines[n - 1] for n, _ in expected]
