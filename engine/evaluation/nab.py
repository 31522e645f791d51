"""NAB scoring: the Numenta Anomaly Benchmark's scorer, implemented from its definition.

The definition (NAB v1.1, see the corpus README): the first 15% of each file (at most 750 rows) is
a probationary period and is not scored. A detection inside a labelled window [L, R] of width W at
row i earns ``A_TP * s(-(R-i+1)/W) / s(-1)`` with ``s(y) = 2/(1+e^(5y)) - 1`` (``-1`` for y > 3);
only the earliest detection in a window counts; a window without detection costs ``-A_FN``. A
detection outside every window costs ``-A_FP``, softened to ``A_FP * s((i-R')/(W'-1))`` after the
most recent window [L', R'] of width W'. One threshold is chosen for the whole corpus per profile
to maximise the raw total, and the final score is ``100 * (raw - null) / (perfect - null)`` with
``null = -A_FN * windows`` and ``perfect = A_TP * windows``.

Why it is built this way: the per-row weight of a detection does not depend on the threshold, so
we compute it once per row, and the threshold sweep becomes one sort of all scores in the corpus
plus cumulative sums (the earliest detection of a window is the one with the largest weight, so a
window's contribution at a threshold is the running maximum of its detected weights). Every
candidate threshold (each distinct score) is evaluated in O(n log n) in total instead of
re-scoring the corpus per threshold.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from engine.errors import EvaluationError, InputError

logger = logging.getLogger(__name__)

PROBATION_PERCENT = 0.15
PROBATION_MAX_ROWS = 750  # NAB: probationPercent * 5000
NOTHING_THRESHOLD = 1.1  # NAB's threshold for "detect nothing" (scores live in [0, 1])
WINDOWS_FILE = Path("labels") / "combined_windows.json"
PROFILES_FILE = Path("config") / "profiles.json"
RESULT_COLUMNS = ("timestamp", "value", "anomaly_score", "label")


@dataclass(frozen=True)
class Profile:
    """One NAB application profile: the weights of true positives, false positives and misses."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


PROFILES: Mapping[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}
"""NAB v1.1's profiles, used when a corpus has no ``config/profiles.json``."""


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's reward curve: ``2/(1+e^(5y)) - 1``, and exactly -1 for y > 3."""
    arr = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = 2.0 / (1.0 + np.exp(5.0 * arr)) - 1.0
    return np.where(arr > 3.0, -1.0, out)


MAX_TP = float(scaled_sigmoid(-1.0))


def probationary_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that NAB does not score: 15% of the file, at most 750."""
    return int(min(math.floor(percent * n_rows), percent * 5000))


@dataclass(frozen=True)
class NabSeries:
    """One file of a NAB corpus with its windows as inclusive row ranges."""

    key: str  # "<category>/<file>.csv", the key of combined_windows.json
    timestamps: np.ndarray  # datetime64[us], naive UTC
    values: np.ndarray  # float64
    windows: tuple[tuple[int, int], ...]  # inclusive (first_row, last_row), sorted
    backwards: int = 0  # rows whose timestamp is earlier than the row before (kept, scored as they are)
    repeated: int = 0  # rows whose timestamp equals the row before

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def file(self) -> str:
        return self.key.split("/", 1)[1]

    @property
    def probation(self) -> int:
        return probationary_length(len(self.values))

    def labels(self) -> np.ndarray:
        """1 for rows inside a window, 0 elsewhere (the ``label`` column of NAB results files)."""
        out = np.zeros(len(self.values), dtype=np.int8)
        for first, last in self.windows:
            out[first : last + 1] = 1
        return out


@dataclass(frozen=True)
class NabCorpus:
    """A NAB-layout corpus: series keyed by ``<category>/<file>.csv`` plus the cost profiles."""

    root: Path
    series: Mapping[str, NabSeries]
    profiles: Mapping[str, Profile]

    @property
    def categories(self) -> list[str]:
        return sorted({s.category for s in self.series.values()})

    @property
    def n_points(self) -> int:
        return sum(len(s.values) for s in self.series.values())

    @property
    def backwards(self) -> int:
        """Rows, in all files, whose timestamp goes back from the row before."""
        return sum(s.backwards for s in self.series.values())

    @property
    def repeated(self) -> int:
        """Rows, in all files, whose timestamp repeats the row before."""
        return sum(s.repeated for s in self.series.values())

    def disorder(self) -> str | None:
        """One line for a person when some rows go back in time or repeat one, else None."""
        if not (self.backwards or self.repeated):
            return None
        files = sum(1 for s in self.series.values() if s.backwards or s.repeated)
        return (
            f"note: {self.backwards} row(s) whose timestamp goes backwards and {self.repeated} with a "
            f"repeated timestamp, in {files} file(s); kept and scored in file order, as NAB does"
        )

    def subset(self, categories: Iterable[str]) -> NabCorpus:
        """The same corpus restricted to some categories (for tune/score splits)."""
        wanted = set(categories)
        unknown = wanted - set(self.categories)
        if unknown:
            raise EvaluationError(
                f"{self.root}: unknown categories {sorted(unknown)}",
                hint=f"choose among {self.categories}",
            )
        kept = {k: s for k, s in self.series.items() if s.category in wanted}
        return NabCorpus(self.root, kept, self.profiles)


def load_profiles(path: Path | None) -> dict[str, Profile]:
    """Profiles from NAB's ``config/profiles.json``; the built-in NAB defaults when absent."""
    if path is None or not path.is_file():
        return dict(PROFILES)
    try:
        raw = json.loads(path.read_text())
        return {
            name: Profile(
                name,
                tp=float(spec["CostMatrix"]["tpWeight"]),
                fp=float(spec["CostMatrix"]["fpWeight"]),
                fn=float(spec["CostMatrix"]["fnWeight"]),
                tn=float(spec["CostMatrix"].get("tnWeight", 1.0)),
            )
            for name, spec in raw.items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(
            f"{path}: cannot read the NAB profiles ({exc!r})",
            hint='each profile needs "CostMatrix": {"tpWeight", "fpWeight", "fnWeight"}',
        ) from exc


def _window_rows(
    stamps: np.ndarray, spans: Sequence[tuple[np.datetime64, np.datetime64]], where: str
) -> tuple[tuple[int, int], ...]:
    """Window (start, end) times to inclusive row ranges (exact for NAB, whose ends are data
    timestamps).

    A window runs from its first row inside ``[start, end]`` to the first row at ``end`` (a
    repeated end timestamp closes the window at its first occurrence, as in NAB), else to its last
    row inside. In file order, so a row whose timestamp went backwards is placed by its time, as
    NAB places it; a row of another time caught between those two rows counts as inside.
    """
    rows: list[tuple[int, int]] = []
    for pos, (start, end) in enumerate(spans):
        inside = np.flatnonzero((stamps >= start) & (stamps <= end))
        at_end = np.flatnonzero(stamps == end)
        if not len(inside):
            logger.warning("%s[%d]: window %s..%s covers no data row; ignored", where, pos, start, end)
            continue
        first = int(inside[0])
        last = int(at_end[0]) if len(at_end) and at_end[0] >= first else int(inside[-1])
        rows.append((first, last))
    rows.sort()
    for (_, last), (first, _) in itertools.pairwise(rows):
        if first <= last:
            raise EvaluationError(f"{where}: windows overlap", hint="merge overlapping windows")
    return tuple(rows)


def load_corpus(root: Path | str, *, categories: Iterable[str] | None = None) -> NabCorpus:
    """Read a NAB-layout corpus: ``data/<category>/<file>.csv`` plus ``labels/combined_windows.json``.

    The files are parsed by ``engine.telemetry.readers.read_nab``, the reader ``selfheal ingest``
    uses, so a corpus scores exactly the rows it ingests. NAB scores every row of a file, so a row
    that reader refuses (an unparsable time, a missing or non-finite value) refuses the corpus,
    named by file and line. Every data file must have an entry in the windows file (an empty list
    for no anomaly; ``read_nab`` refuses the corpus otherwise); window entries without a data file
    are ignored, so a label file of the full corpus serves a subset.
    """
    from engine.telemetry.readers import read_nab

    root = Path(root)
    windows_path = root / WINDOWS_FILE
    if not windows_path.is_file():
        raise InputError(
            f"{root}: no {WINDOWS_FILE} here; not a NAB corpus folder",
            hint="point --corpus at the folder holding data/ and labels/combined_windows.json",
        )
    read = read_nab(root)
    if read.rejects.height:
        bad = read.rejects.row(0, named=True)
        raise InputError(
            f"{bad['file']}: line {bad['line']}: {bad['reason']} ({read.rejects.height} such row(s) in "
            "the corpus); NAB scores every row of a file",
            hint="fix or remove that row: a NAB data file has 'timestamp,value' and one number per row",
        )
    points = read.points.with_columns(key=pl.col("service") + ".csv").sort("key", "line")
    present = points["key"].unique().to_list()
    wanted = set(categories) if categories is not None else None
    if wanted is not None:
        cats = {key.split("/", 1)[0] for key in present}
        if wanted - cats:
            raise InputError(
                f"{root / 'data'}: no category {sorted(wanted - cats)}",
                hint=f"categories here: {sorted(cats)}",
            )
    spans: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    assert read.incidents is not None
    for service, start, end in read.incidents.select("service", "start", "end").iter_rows():
        spans.setdefault(f"{service}.csv", []).append((np.datetime64(start, "us"), np.datetime64(end, "us")))
    series: dict[str, NabSeries] = {}
    for (key,), frame in points.group_by("key", maintain_order=True):
        key = str(key)
        if wanted is not None and key.split("/", 1)[0] not in wanted:
            continue
        stamps = frame["ts"].to_numpy().astype("datetime64[us]")
        values = frame["value"].to_numpy().astype(np.float64)
        steps = np.diff(stamps)
        backwards = int(np.count_nonzero(steps < np.timedelta64(0, "us")))
        repeated = int(np.count_nonzero(steps == np.timedelta64(0, "us")))
        if backwards:
            first = int(np.argmax(steps < np.timedelta64(0, "us"))) + 1
            logger.warning(
                "%s: %d row(s) whose timestamp goes backwards (first at data row %d: %s after %s); "
                "kept in file order",
                frame["file"][0],
                backwards,
                first + 1,
                stamps[first],
                stamps[first - 1],
            )
        windows = _window_rows(stamps, spans.get(key, []), f"{windows_path}: {key}")
        series[key] = NabSeries(key, stamps, values, windows, backwards, repeated)
    return NabCorpus(root, dict(sorted(series.items())), load_profiles(root / PROFILES_FILE))


# --- results files -------------------------------------------------------------------------------


def _detectors_in(results_dir: Path, corpus: NabCorpus) -> set[str]:
    found: set[str] = set()
    for s in corpus.series.values():
        for path in (results_dir / s.category).glob(f"*_{s.file}"):
            found.add(path.name[: -len(s.file) - 1])
    return found


def load_results(
    results_dir: Path | str, corpus: NabCorpus, *, detector: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """Read a NAB-layout results folder (``<category>/<detector>_<file>.csv``): detector, scores.

    The anomaly_score column is taken row by row against the corpus file, as NAB does; a results
    file must have one row per data row. Without ``detector`` the folder must hold exactly one.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(f"{results_dir}: no such results folder", hint="pass the folder holding <category>/")
    if detector is None:
        names = _detectors_in(results_dir, corpus)
        if len(names) != 1:
            raise EvaluationError(
                f"{results_dir}: found {len(names)} detectors ({sorted(names)}), expected exactly one",
                hint="name the detector with --detector",
            )
        detector = names.pop()
    scores: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for key, s in corpus.series.items():
        path = results_dir / s.category / f"{detector}_{s.file}"
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            col = pl.read_csv(path, columns=["anomaly_score"])["anomaly_score"].cast(pl.Float64, strict=True)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise EvaluationError(
                f"{path}: no numeric anomaly_score column ({str(exc).splitlines()[0]})",
                hint="NAB results files have the columns timestamp,value,anomaly_score,label",
            ) from exc
        arr = col.to_numpy()
        if len(arr) != len(s.values):
            raise EvaluationError(
                f"{path}: {len(arr)} rows but {key} has {len(s.values)}",
                hint="a results file must have one row per data row",
            )
        scores[key] = arr
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise EvaluationError(
            f"{results_dir}: no results for {len(missing)} of {len(corpus.series)} files: {shown}",
            hint="NAB scores a whole corpus; produce every file or restrict the corpus",
        )
    return detector, scores


def write_results(out_dir: Path | str, detector: str, series: NabSeries, scores: np.ndarray) -> Path:
    """Write one NAB results file ``<out>/<category>/<detector>_<file>.csv``."""
    path = Path(out_dir) / series.category / f"{detector}_{series.file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "timestamp": pl.Series(series.timestamps).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "value": series.values,
            "anomaly_score": np.asarray(scores, dtype=np.float64),
            "label": series.labels(),
        }
    )
    frame.write_csv(path, float_precision=None)
    return path


# --- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowWeights:
    """Profile-free weights of the scorable rows of one series.

    ``tp_unit`` is the reward of a detection in a window as a fraction of A_TP (s(..)/s(-1));
    ``fp_unit`` the cost of a detection outside windows as a multiple of A_FP (negative).
    """

    window: np.ndarray  # int64 window index within the series, -1 outside windows
    tp_unit: np.ndarray
    fp_unit: np.ndarray
    n_windows: int  # windows with at least one scorable row


def _row_weights(series: NabSeries) -> _RowWeights:
    n = len(series.values)
    idx = np.arange(n)
    window = np.full(n, -1, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.full(n, -1.0)  # before any window: the full cost
    for k, (first, last) in enumerate(series.windows):
        width = last - first + 1
        rows = idx[first : last + 1]
        window[first : last + 1] = k
        tp_unit[first : last + 1] = scaled_sigmoid(-(last - rows + 1) / width) / MAX_TP
        end = series.windows[k + 1][0] if k + 1 < len(series.windows) else n
        after = idx[last + 1 : end]
        fp_unit[last + 1 : end] = scaled_sigmoid(np.abs(last - after) / max(width - 1, 1))
    keep = idx >= series.probation
    window = window[keep]
    return _RowWeights(window, tp_unit[keep], fp_unit[keep], len(np.unique(window[window >= 0])))


@dataclass(frozen=True)
class Tally:
    """Raw score and counts of a set of files at one threshold (FP counts rows, as NAB does)."""

    raw: float
    tp: int
    fp: int
    fn: int
    windows: int

    def normalized(self, profile: Profile) -> float | None:
        """100 * (raw - null) / (perfect - null); None when there is no window to normalise by."""
        if self.windows == 0:
            return None
        null = -profile.fn * self.windows
        perfect = profile.tp * self.windows
        return 100.0 * (self.raw - null) / (perfect - null)


@dataclass(frozen=True)
class ProfileScore:
    """The result of one profile: the chosen threshold, totals, and breakdowns."""

    profile: Profile
    threshold: float
    total: Tally
    by_category: Mapping[str, Tally]
    by_file: Mapping[str, Tally]

    @property
    def score(self) -> float:
        value = self.total.normalized(self.profile)
        return float("nan") if value is None else value


@dataclass(frozen=True)
class NabReport:
    """Scores of one results set under every profile."""

    profiles: Mapping[str, ProfileScore]
    n_files: int
    n_points: int
    optimized: bool

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for MLflow: ``<profile>.score``, ``.threshold``, ``.raw``, counts, categories."""
        out: dict[str, float] = {}
        for name, p in self.profiles.items():
            out[f"{name}.score"] = p.score
            out[f"{name}.threshold"] = p.threshold
            out[f"{name}.raw"] = p.total.raw
            out[f"{name}.tp"] = p.total.tp
            out[f"{name}.fp"] = p.total.fp
            out[f"{name}.fn"] = p.total.fn
            for cat, tally in p.by_category.items():
                norm = tally.normalized(p.profile)
                out[f"{name}.{cat}.raw"] = tally.raw
                if norm is not None:
                    out[f"{name}.{cat}.score"] = norm
        return out


class _Prepared:
    """Every scorable row of a corpus, flattened once and shared by all profiles."""

    def __init__(self, corpus: NabCorpus, scores: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in corpus.series if k not in scores]
        if missing:
            raise EvaluationError(
                f"no scores for {len(missing)} file(s): {missing[:3]}",
                hint="NAB scores a whole corpus; give one score array per file",
            )
        parts_score, parts_window, parts_tp, parts_fp, parts_file = [], [], [], [], []
        self.keys = list(corpus.series)
        self.window_file: list[int] = []
        self.windows_per_file: list[int] = []
        offset = 0
        for f, key in enumerate(self.keys):
            s = corpus.series[key]
            arr = np.asarray(scores[key], dtype=np.float64)
            if arr.shape != s.values.shape:
                raise EvaluationError(
                    f"{key}: {arr.shape[0] if arr.ndim else 0} scores for {len(s.values)} rows",
                    hint="one score per data row",
                )
            if not np.all(np.isfinite(arr)):
                raise EvaluationError(f"{key}: NaN or infinite anomaly scores", hint="scores must be finite")
            w = _row_weights(s)
            arr = arr[s.probation :]
            parts_score.append(arr)
            # renumber this file's windows globally; windows fully in probation drop out
            local = np.unique(w.window[w.window >= 0])
            remap = np.full(len(s.windows) + 1, -1, dtype=np.int64)
            remap[local] = offset + np.arange(len(local))
            parts_window.append(np.where(w.window >= 0, remap[w.window], -1))
            offset += len(local)
            self.window_file.extend([f] * len(local))
            self.windows_per_file.append(len(local))
            parts_tp.append(w.tp_unit)
            parts_fp.append(w.fp_unit)
            parts_file.append(np.full(len(arr), f, dtype=np.int64))
        self.score = np.concatenate(parts_score) if parts_score else np.zeros(0)
        self.window = np.concatenate(parts_window) if parts_window else np.zeros(0, dtype=np.int64)
        self.tp_unit = np.concatenate(parts_tp) if parts_tp else np.zeros(0)
        self.fp_unit = np.concatenate(parts_fp) if parts_fp else np.zeros(0)
        self.file = np.concatenate(parts_file) if parts_file else np.zeros(0, dtype=np.int64)
        self.n_windows = offset
        self._order: np.ndarray | None = None

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.argsort(-self.score, kind="stable")
        return self._order

    def sweep(self, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
        """Raw total at every candidate threshold, highest threshold first (NAB's ordering).

        Candidate k detects every row whose score >= thresholds[k]; the first candidate detects
        nothing. A window's contribution is the running maximum of the weights of its detected
        rows (the earliest detection has the largest weight), so its increments are summed.
        """
        order = self.order
        s = self.score[order]
        win = self.window[order]
        delta = np.where(win < 0, self.fp_unit[order] * profile.fp, 0.0)
        in_win = np.flatnonzero(win >= 0)
        if len(in_win):
            # group window rows by window, keeping the descending-score order inside each group
            grouped = in_win[np.argsort(win[in_win], kind="stable")]
            gw = win[grouped]
            weights = self.tp_unit[order][grouped] * profile.tp
            bounds = np.flatnonzero(np.diff(gw)) + 1
            inc = np.empty(len(grouped))
            for seg in np.split(np.arange(len(grouped)), bounds):
                run = np.maximum.accumulate(weights[seg])
                inc[seg[0]] = run[0] + profile.fn
                inc[seg[1:]] = np.diff(run)
            delta[grouped] = inc
        totals = -profile.fn * self.n_windows + np.cumsum(delta)
        last_of_run = np.flatnonzero(np.diff(s) != 0) if len(s) else np.zeros(0, dtype=np.int64)
        ends = np.append(last_of_run, len(s) - 1) if len(s) else last_of_run
        top = (
            NOTHING_THRESHOLD if not len(s) or s[0] < NOTHING_THRESHOLD else float(np.nextafter(s[0], np.inf))
        )
        thresholds = np.concatenate([[top], s[ends]])
        raw = np.concatenate([[-profile.fn * self.n_windows], totals[ends]])
        return thresholds, raw

    def tally(self, profile: Profile, threshold: float) -> tuple[Tally, dict[str, Tally]]:
        """Raw score and counts at one threshold, in total and per file."""
        n_files = len(self.keys)
        hit = self.score >= threshold
        fp_rows = hit & (self.window < 0)
        fp_raw = np.bincount(
            self.file[fp_rows], weights=self.fp_unit[fp_rows] * profile.fp, minlength=n_files
        )
        fp_count = np.bincount(self.file[fp_rows], minlength=n_files)
        best = np.full(self.n_windows, -np.inf)
        tp_rows = hit & (self.window >= 0)
        np.maximum.at(best, self.window[tp_rows], self.tp_unit[tp_rows] * profile.tp)
        detected = np.isfinite(best)
        contrib = np.where(detected, best, -profile.fn)
        wf = np.asarray(self.window_file, dtype=np.int64)
        win_raw = np.bincount(wf, weights=contrib, minlength=n_files) if self.n_windows else np.zeros(n_files)
        tp_count = np.bincount(wf[detected], minlength=n_files) if self.n_windows else np.zeros(n_files, int)
        per_file: dict[str, Tally] = {}
        for f, key in enumerate(self.keys):
            n_w = self.windows_per_file[f]
            per_file[key] = Tally(
                raw=float(fp_raw[f] + win_raw[f]),
                tp=int(tp_count[f]),
                fp=int(fp_count[f]),
                fn=int(n_w - tp_count[f]),
                windows=n_w,
            )
        return _sum_tallies(per_file.values()), per_file


def _sum_tallies(tallies: Iterable[Tally]) -> Tally:
    items = list(tallies)
    return Tally(
        raw=float(math.fsum(t.raw for t in items)),
        tp=sum(t.tp for t in items),
        fp=sum(t.fp for t in items),
        fn=sum(t.fn for t in items),
        windows=sum(t.windows for t in items),
    )


def _optimize_threshold(prepared: _Prepared, profile: Profile) -> tuple[float, float]:
    """The threshold maximising the corpus raw total (ties: the highest threshold), and that total."""
    thresholds, raw = prepared.sweep(profile)
    best = int(np.argmax(raw))
    return float(thresholds[best]), float(raw[best])


def threshold_curve(
    corpus: NabCorpus, scores: Mapping[str, np.ndarray], profile: Profile | str = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw corpus total at every candidate threshold (highest first; the first detects nothing).

    For notebooks: plot ``raw`` against ``thresholds`` to see how flat the optimum is.
    """
    prof = corpus.profiles[profile] if isinstance(profile, str) else profile
    return _Prepared(corpus, scores).sweep(prof)


def score_results(
    corpus: NabCorpus,
    scores: Mapping[str, np.ndarray],
    *,
    thresholds: Mapping[str, float] | None = None,
    profiles: Mapping[str, Profile] | None = None,
) -> NabReport:
    """Score per-row anomaly scores of every corpus file under every profile.

    Without ``thresholds`` each profile gets its own corpus-wide optimal threshold (NAB's
    procedure); with them, the given threshold of each profile is used (e.g. published ones).
    """
    chosen = dict(profiles if profiles is not None else corpus.profiles)
    if thresholds is not None:
        unknown = set(thresholds) - set(chosen)
        if unknown:
            raise EvaluationError(
                f"thresholds for unknown profiles {sorted(unknown)}", hint=f"profiles are {sorted(chosen)}"
            )
    prepared = _Prepared(corpus, scores)
    results: dict[str, ProfileScore] = {}
    for name, profile in chosen.items():
        if thresholds is not None and name in thresholds:
            threshold = float(thresholds[name])
        else:
            threshold, _ = _optimize_threshold(prepared, profile)
        total, per_file = prepared.tally(profile, threshold)
        by_category: dict[str, list[Tally]] = {}
        for key, tally in per_file.items():
            by_category.setdefault(key.split("/", 1)[0], []).append(tally)
        results[name] = ProfileScore(
            profile=profile,
            threshold=threshold,
            total=total,
            by_category={cat: _sum_tallies(ts) for cat, ts in sorted(by_category.items())},
            by_file=per_file,
        )
    return NabReport(
        profiles=results,
        n_files=len(corpus.series),
        n_points=corpus.n_points,
        optimized=thresholds is None,
    )


def format_report(report: NabReport) -> str:
    """A plain-text table: the three profile scores and thresholds, then scores per category."""
    lines = [f"{'profile':<20} {'score':>8} {'threshold':>12} {'raw':>10} {'TP':>4} {'FP':>6} {'FN':>4}"]
    for name, p in report.profiles.items():
        t = p.total
        lines.append(
            f"{name:<20} {p.score:>8.4f} {p.threshold:>12.6g} {t.raw:>10.4f} {t.tp:>4} {t.fp:>6} {t.fn:>4}"
        )
    names = list(report.profiles)
    if names:
        cats = list(report.profiles[names[0]].by_category)
        lines.append("")
        lines.append(f"{'category':<24} {'windows':>7} " + " ".join(f"{n:>20}" for n in names))
        for cat in cats:
            cells = []
            for n in names:
                p = report.profiles[n]
                tally = p.by_category[cat]
                norm = tally.normalized(p.profile)
                cells.append(
                    f"{norm:>20.2f}" if norm is not None else f"{'raw ' + format(tally.raw, '.3f'):>20}"
                )
            windows = report.profiles[names[0]].by_category[cat].windows
            lines.append(f"{cat:<24} {windows:>7} " + " ".join(cells))
    return "\n".join(lines)
