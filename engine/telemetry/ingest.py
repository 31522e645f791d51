"""``selfheal ingest``: read telemetry files, store the valid rows, quarantine the bad ones, report.

DuckDB allows one writing process and a writer locks out every other one, so the store is opened
once up front (to fail fast when someone else holds it) and then only while each input is written,
after it has been read and validated. Each input is its own insert: a failure part-way leaves the
earlier inputs stored, and a re-run skips what is already there.

Quarantine: one JSON-lines file per run under ``Home.quarantine`` named
``ingest-<UTC time>-<pid>.jsonl``; each line is ``{"file", "line", "reason", "raw"}``. It is written
only when something was rejected.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from engine.errors import InputError
from engine.telemetry.readers import expand_paths, read_path
from engine.telemetry.store import TelemetryStore

log = logging.getLogger(__name__)


@dataclass
class FileReport:
    """Counts for one input."""

    path: Path
    format: str
    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    incidents_read: int = 0
    incidents_inserted: int = 0
    error: str | None = None  # the whole input could not be read

    @property
    def valid(self) -> int:
        return self.inserted + self.duplicates


@dataclass
class IngestReport:
    """Counts for a whole run, and where the rejected rows went."""

    files: list[FileReport]
    quarantine: Path | None

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files)

    @property
    def valid(self) -> int:
        return sum(f.valid for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.files)

    @property
    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.rejected)
        return total

    @property
    def incidents_inserted(self) -> int:
        return sum(f.incidents_inserted for f in self.files)

    def lines(self) -> list[str]:
        """The human-readable report the CLI prints."""
        out = []
        for f in self.files:
            if f.error:
                out.append(f"{f.path} [{f.format}]: not read: {f.error}")
                continue
            text = (
                f"{f.path} [{f.format}]: read {f.read}, inserted {f.inserted}, "
                f"duplicates skipped {f.duplicates}, rejected {sum(f.rejected.values())}"
            )
            if f.incidents_read:
                text += f", incidents inserted {f.incidents_inserted} of {f.incidents_read}"
            out.append(text)
        rejected = self.rejected
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items()))
        out.append(
            f"total: read {self.read}, inserted {self.inserted}, duplicates skipped {self.duplicates}, "
            f"rejected {sum(rejected.values())}{f' ({detail})' if detail else ''}"
        )
        if self.quarantine is not None:
            out.append(f"quarantine: {self.quarantine}")
        return out

    def check(self) -> None:
        """Raise InputError when nothing valid was read at all (every input unreadable or every row bad)."""
        if self.valid:
            return
        reasons = "; ".join(f"{f.path}: {f.error}" for f in self.files if f.error) or "every row was rejected"
        where = f"; rejected rows are in {self.quarantine}" if self.quarantine else ""
        raise InputError(
            f"nothing valid was read from {len(self.files)} input(s), {self.read} row(s) read "
            f"({reasons}){where}",
            hint="check the format (--format), the columns ts/service/metric/value and the quarantine file",
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "incidents_inserted": self.incidents_inserted,
            "quarantine": str(self.quarantine) if self.quarantine else None,
            "files": [
                {
                    "path": str(f.path),
                    "format": f.format,
                    "read": f.read,
                    "inserted": f.inserted,
                    "duplicates": f.duplicates,
                    "rejected": dict(f.rejected),
                    "incidents_inserted": f.incidents_inserted,
                    "error": f.error,
                }
                for f in self.files
            ],
        }


def ingest(
    paths: Sequence[Path],
    *,
    db: Path,
    quarantine_dir: Path,
    fmt: str | None = None,
    default_ts: datetime | None = None,
    progress: bool = False,
) -> IngestReport:
    """Ingest files/folders into the store at ``db``; bad rows and unreadable inputs are reported,
    not raised, so one broken file does not stop the others (see ``IngestReport.check``).
    """
    from tqdm import tqdm

    inputs = expand_paths(paths, fmt)
    reports: list[FileReport] = []
    rejects: list[pl.DataFrame] = []
    with TelemetryStore(db):  # fail fast when another process holds the file; creates the schema
        pass
    for path, kind in tqdm(inputs, desc="ingest", unit="file", disable=not progress or len(inputs) < 2):
        report = FileReport(path=path, format=kind)
        reports.append(report)
        try:
            result = read_path(path, kind, default_ts=default_ts)
        except InputError as exc:
            report.error = str(exc)
            log.warning("skipped %s: %s", path, exc)
            continue
        report.read = result.read
        report.rejected = Counter(result.rejects["reason"].to_list())
        if result.rejects.height:
            rejects.append(result.rejects)
        with TelemetryStore(db) as store:  # one short connection per input, held only to write
            report.inserted = store.insert_points(result.points, source=result.source)
            if result.incidents is not None:
                report.incidents_read = result.incidents.height
                report.incidents_inserted = store.insert_incidents(result.incidents)
        report.duplicates = result.points.height - report.inserted
    quarantine = _write_quarantine(quarantine_dir, rejects) if rejects else None
    return IngestReport(reports, quarantine)


def _write_quarantine(folder: Path, rejects: list[pl.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"ingest-{stamp}-{os.getpid()}.jsonl"
    pl.concat(rejects).select("file", "line", "reason", "raw").write_ndjson(path)
    log.info("quarantined %d row(s) in %s", sum(r.height for r in rejects), path)
    return path
