"""Leave-one-category-out cross-validation of NAB detector configurations.

Why: a configuration and a threshold chosen on the files they are scored on report an optimistic
figure (the README's 76.96 was tuned on the same subset and scored 56.4 on NAB categories it had
never seen). Here every category is scored by a configuration *and* threshold chosen on the other
categories only: for each held-out category and each profile, the candidate with the best
optimised score on the rest is picked, its threshold is the one optimal on the rest, and the
held-out category is scored at it. The held-out raw scores of all categories are added and
normalised over all windows: the cross-validated figure (``nested``). A category without windows
(artificialNoAnomaly) can only lose points to false positives, so it is held out like the others
and counts in the total through its raw score.

The candidates are streaming detector specs (``engine.evaluation.streaming``); each is replayed
over the corpus once: a detector never sees labels, so only the choice among candidates and the
threshold are fitted, and those are fitted per fold. Besides the nested figure, each candidate's
own cross-validated score (its threshold chosen per fold, its configuration fixed) ranks the
candidates; the shipped default is the best of that ranking, and the nested figure is the honest
estimate of what choosing that way is worth on a category never seen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, EvaluationError
from engine.evaluation.nab import NabCorpus, Profile, Tally, score_results

if TYPE_CHECKING:
    from engine.evaluation.streaming import DetectorSpec

__all__ = ["CvFold", "CvReport", "candidate_specs", "cross_validate", "format_cv", "grid_specs", "log_cv"]


@dataclass(frozen=True)
class CvFold:
    """One held-out category under one profile: what was chosen without it and what it scored."""

    category: str
    profile: str
    candidate: str  # chosen on the other categories
    threshold: float  # optimal on the other categories
    train_score: float  # the chosen candidate's optimised score on the other categories
    held_out: Tally  # the held-out category at that candidate and threshold

    def score(self, profile: Profile) -> float | None:
        return self.held_out.normalized(profile)


@dataclass(frozen=True)
class CvReport:
    """Nested leave-one-category-out scores, each candidate's own CV and in-sample scores."""

    profiles: Mapping[str, Profile]
    categories: tuple[str, ...]
    folds: tuple[CvFold, ...]  # the nested procedure: candidate and threshold chosen per fold
    candidate_cv: Mapping[str, Mapping[str, float]]  # candidate -> profile -> CV score (config fixed)
    in_sample: Mapping[str, Mapping[str, float]]  # candidate -> profile -> optimised on everything

    def nested(self, profile: str) -> float:
        """The cross-validated score of a profile: held-out raw totals over all windows."""
        folds = [f for f in self.folds if f.profile == profile]
        return _pooled([f.held_out for f in folds], self.profiles[profile])

    def best_candidate(self, profile: str = "standard") -> str:
        """The candidate with the best own cross-validated score (ties: the earlier in the grid)."""
        scores = {name: cv[profile] for name, cv in self.candidate_cv.items()}
        return max(scores, key=lambda name: (scores[name], -list(scores).index(name)))

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for MLflow: ``cv.<profile>.score``, per held-out category and per candidate."""
        out: dict[str, float] = {}
        for name, profile in self.profiles.items():
            out[f"cv.{name}.score"] = self.nested(name)
            for f in self.folds:
                if f.profile != name:
                    continue
                out[f"cv.{name}.{f.category}.raw"] = f.held_out.raw
                norm = f.score(profile)
                if norm is not None:
                    out[f"cv.{name}.{f.category}.score"] = norm
            for cand, scores in self.candidate_cv.items():
                out[f"candidate.{cand}.cv.{name}"] = scores[name]
                out[f"candidate.{cand}.in_sample.{name}"] = self.in_sample[cand][name]
        return out


def _pooled(tallies: Sequence[Tally], profile: Profile) -> float:
    total = Tally(
        raw=math.fsum(t.raw for t in tallies),
        tp=sum(t.tp for t in tallies),
        fp=sum(t.fp for t in tallies),
        fn=sum(t.fn for t in tallies),
        windows=sum(t.windows for t in tallies),
    )
    value = total.normalized(profile)
    return math.nan if value is None else value


def cross_validate(
    corpus: NabCorpus,
    candidates: Mapping[str, Mapping[str, np.ndarray]],
    *,
    on_fold: Callable[[str], None] | None = None,
) -> CvReport:
    """Leave-one-category-out over ``candidates`` (name -> per-file scores of the whole corpus)."""
    if not candidates:
        raise EvaluationError("no candidate to cross-validate", hint="give at least one detector spec")
    categories = tuple(corpus.categories)
    if len(categories) < 2:
        raise EvaluationError(
            f"{corpus.root}: {len(categories)} category; leave-one-category-out needs two or more",
            hint="run on a corpus with several categories",
        )
    profiles = dict(corpus.profiles)
    folds: list[CvFold] = []
    own: dict[str, dict[str, list[Tally]]] = {c: {p: [] for p in profiles} for c in candidates}
    for held in categories:
        train = corpus.subset(c for c in categories if c != held)
        test = corpus.subset([held])
        fitted = {name: score_results(train, scores) for name, scores in candidates.items()}
        for cand, report in fitted.items():  # each candidate alone: only its threshold is fitted
            thresholds = {p: report.profiles[p].threshold for p in profiles}
            held_report = score_results(test, candidates[cand], thresholds=thresholds)
            for p in profiles:
                own[cand][p].append(held_report.profiles[p].total)
        for p in profiles:
            # the nested choice: the best candidate on the other categories (ties: earlier in the grid)
            cand = max(fitted, key=lambda c: (fitted[c].profiles[p].score, -list(fitted).index(c)))
            chosen = fitted[cand].profiles[p]
            tally = own[cand][p][-1]
            folds.append(CvFold(held, p, cand, chosen.threshold, chosen.score, tally))
        if on_fold is not None:
            on_fold(held)
    candidate_cv = {
        cand: {p: _pooled(tallies, profiles[p]) for p, tallies in per.items()} for cand, per in own.items()
    }
    in_sample = {
        cand: {p: ps.score for p, ps in score_results(corpus, scores).profiles.items()}
        for cand, scores in candidates.items()
    }
    return CvReport(profiles, categories, tuple(folds), candidate_cv, in_sample)


def format_cv(report: CvReport) -> str:
    """Plain-text tables: per held-out category the chosen candidate and its score, then the
    cross-validated total beside the in-sample score of each candidate."""
    names = list(report.profiles)
    lines = ["leave-one-category-out (candidate and threshold chosen on the other categories)"]
    lines.append(f"{'held out':<24} " + " ".join(f"{n:>34}" for n in names))
    for cat in report.categories:
        cells = []
        for n in names:
            fold = next(f for f in report.folds if f.category == cat and f.profile == n)
            norm = fold.score(report.profiles[n])
            shown = f"{norm:.2f}" if norm is not None else f"raw {fold.held_out.raw:.3f}"
            cells.append(f"{shown + ' (' + fold.candidate + ')':>34}")
        lines.append(f"{cat:<24} " + " ".join(cells))
    lines.append(f"{'cross-validated':<24} " + " ".join(f"{report.nested(n):>34.2f}" for n in names))
    lines.append("")
    lines.append("each candidate: cross-validated (threshold chosen per fold) / in-sample (optimised on all)")
    lines.append(f"{'candidate':<24} " + " ".join(f"{n:>34}" for n in names))
    best = report.best_candidate()
    for cand in report.candidate_cv:
        cells = [
            f"{report.candidate_cv[cand][n]:.2f} / {report.in_sample[cand][n]:.2f}".rjust(34) for n in names
        ]
        mark = " *" if cand == best else ""
        lines.append(f"{cand + mark:<24} " + " ".join(cells))
    lines.append("* best cross-validated standard score")
    return "\n".join(lines)


GRID_FILE = "cv/grid.yaml"  # under experiments/nab/


def candidate_specs(refs: Sequence[str] | None, *, grid: Path | None = None) -> list[DetectorSpec]:
    """The candidates: the given specs (paths or names in experiments/nab/), else those of the grid
    file (``experiments/nab/cv/grid.yaml``, see ``grid_specs``). Names must differ (they name
    results files and metrics)."""
    from engine.evaluation.streaming import SPEC_DIR, load_detector_spec

    specs = [load_detector_spec(ref) for ref in refs] if refs else grid_specs(grid or SPEC_DIR / GRID_FILE)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"candidates share the name(s) {dupes}", hint="give each candidate its own name")
    return specs


def grid_specs(path: Path) -> list[DetectorSpec]:
    """Candidates from a grid file: ``base`` (a spec), ``grid`` (``vary``: dotted spec paths to
    lists of values, every combination a candidate named by ``name`` with ``{path}`` filled in) and
    ``candidates`` (partial specs laid over the base)."""
    import itertools

    from engine.evaluation.streaming import load_detector_spec, parse_detector_spec
    from engine.specs import load_yaml

    doc = load_yaml(path, hint="fix the grid file's syntax")
    if not isinstance(doc, dict) or set(doc) - {"base", "grid", "candidates"}:
        raise ConfigError(f"{path}: a grid file has the keys base, grid, candidates", hint="see its comments")
    base = load_detector_spec(doc.get("base")).model_dump(mode="json")
    docs: list[dict[str, Any]] = []
    grid = doc.get("grid") or {}
    vary: dict[str, list[Any]] = grid.get("vary") or {}
    for values in itertools.product(*vary.values()) if vary else ():
        spec = _over(base, {})
        chosen = dict(zip(vary, values, strict=True))
        for dotted, value in chosen.items():
            _set(spec, dotted, value, path)
        name = str(grid.get("name", "grid"))
        for dotted, value in chosen.items():
            name = name.replace("{" + dotted + "}", f"{value:g}" if isinstance(value, float) else str(value))
        spec["name"] = name
        docs.append(spec)
    for partial in doc.get("candidates") or []:
        docs.append(_over(base, partial))
    return [parse_detector_spec(d, source=f"{path}: {d.get('name')}") for d in docs]


def _over(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over a deep copy of ``base`` (mappings merged, everything else replaced)."""
    out: dict[str, Any] = {k: (_over(v, {}) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _over(out[key], value)
        else:
            out[key] = value
    return out


def _set(spec: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    *parents, leaf = dotted.split(".")
    node = spec
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(
                f"{path}: grid path {dotted!r} is not in the spec", hint="e.g. postprocess.average"
            )
        node = node[part]
    node[leaf] = value


def log_cv(
    report: CvReport, specs: Sequence[DetectorSpec], *, tracking_uri: str, corpus: Path, out: Path | None
) -> str:
    """Log a cross-validation to MLflow (experiment "nab"): the cross-validated and per-category
    held-out scores, each candidate's CV and in-sample scores, the candidates' specs."""
    import mlflow

    from engine.errors import TrackingError
    from engine.evaluation.streaming import NAB_EXPERIMENT
    from engine.home import use_tracking

    try:
        use_tracking(tracking_uri)
        mlflow.set_experiment(NAB_EXPERIMENT)
        with mlflow.start_run(run_name="cv") as run:
            mlflow.set_tags({"corpus": str(corpus), "results": str(out or ""), "kind": "nab-cv"})
            mlflow.log_params(
                {"candidates": ",".join(s.name for s in specs), "best": report.best_candidate()}
            )
            mlflow.log_metrics({re.sub(r"[^A-Za-z0-9_./ -]", "_", k): v for k, v in report.as_dict().items()})
            for spec in specs:
                mlflow.log_text(spec.model_dump_json(indent=2), f"candidates/{spec.name}.json")
            mlflow.log_text(format_cv(report), "nab_cv.txt")
            return run.info.run_id
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"MLflow at {tracking_uri}: {exc}", hint="check --tracking-uri") from exc
