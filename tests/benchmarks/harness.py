"""The benchmark harness behind ``make bench``.

A benchmark module (``tests/benchmarks/bench_*.py``) exposes ``BENCHMARKS``: callables that take
``repeats`` and return ``Row``s. Each row carries the raw samples of the figure and of a baseline
measured in the same run, so the table shows medians and the ratio, never one noisy number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the table: a figure, its baseline from the same run, and what is good."""

    figure: str
    unit: str
    samples: Sequence[float]
    baseline: str = ""
    baseline_samples: Sequence[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: str = ""
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        if not base:
            return None
        return self.median / base


Benchmark = Callable[[int], list[Row]]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(rows: Sequence[Row]) -> str:
    """A plain-text table: figure, median (n), baseline median, ratio, target, note."""
    header = ["figure", "median", "unit", "n", "baseline", "baseline median", "ratio", "target", "note"]
    body = [
        [
            r.figure,
            _fmt(r.median),
            r.unit,
            str(len(r.samples)),
            r.baseline or "-",
            _fmt(r.baseline_median),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.target or "-",
            r.note,
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(b) for b in body)
    return "\n".join(out)
