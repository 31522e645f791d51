"""Prometheus text exposition, read one way for a scraped target and for a ``.prom`` file.

Each line is parsed on its own (``prometheus_client``'s parser on that line), so a line that does
not parse is refused alone and named (a whole scrape used to fail on one bad line), and every
sample keeps the line it came from. Samples become point objects that go through the one point
parser (``engine.telemetry.points``): a NaN or infinite sample, a missing service, a name too long
are refused by the same rules, with the same codes, as a pushed point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from engine.telemetry.points import RAW_CHARS, NameRules, Point, Rejection, check_items

log = logging.getLogger(__name__)


def samples(text: str) -> Iterator[tuple[int, Any, Rejection | None]]:
    """``(line, sample, None)`` for each sample, ``(line, None, rejection)`` for a line that does
    not parse; lines are 0-based and split at ``\n`` only (the exposition format's line end, and
    how a file's lines are numbered), comments and blank lines are skipped."""
    from prometheus_client.parser import text_string_to_metric_families

    for number, line in enumerate(lines(text)):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            found = [s for family in text_string_to_metric_families(stripped + "\n") for s in family.samples]
        except (ValueError, IndexError, KeyError) as exc:
            log.debug("line %d: %s", number + 1, exc)
            yield (
                number,
                None,
                Rejection(number, "line", "malformed_line", "not a Prometheus sample", line[:RAW_CHARS]),
            )
            continue
        for sample in found:
            yield number, sample, None


def lines(text: str) -> list[str]:
    """The lines of an exposition text (``\r\n`` ends read as ``\n``)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_points(
    text: str, to_items: Callable[[Any], list[dict[str, Any]]], names: NameRules
) -> tuple[list[Point], list[int], list[dict[str, Any]], list[Rejection]]:
    """Samples of ``text`` turned into point objects by ``to_items`` (none, one or several per
    sample) and checked by the point parser: good points with their line and object, rejections."""
    numbered = lines(text)
    items: list[dict[str, Any]] = []
    index: list[int] = []
    bad: list[Rejection] = []
    for number, sample, error in samples(text):
        if error is not None:
            bad.append(error)
            continue
        for item in to_items(sample):
            items.append(item)
            index.append(number)
    good, kept, refused = check_items(items, names, unit="line", index=index)
    bad += [Rejection(r.index, r.field, r.code, r.reason, numbered[r.index][:RAW_CHARS]) for r in refused]
    return good, [index[k] for k in kept], [items[k] for k in kept], sorted(bad, key=lambda r: r.index)
