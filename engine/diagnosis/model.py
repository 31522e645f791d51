"""The fault-kind model: a random forest over a service's signature and its recent latency.

Why a forest: one decision tree (depth 8) traded latency creep against ``unknown`` with every
input, depth and labelling tried: a single deep tree is a high-variance learner, and which of the
two classes a borderline row fell in changed with the tree. Fifty trees, each fitted on a bootstrap
of the rows and a random subset of the inputs at each split, average that variance away; on the
training seeds' cross-validation both classes rose at once (README, "Diagnosis"). Its questions
are still about named inputs ("latency p50 up for 20 minutes?", "memory up?"), so ``summary()``
can say, per kind, which inputs raise its probability.

The model is a JSON document of arrays (no pickle: a bundle loads it without running code): the
trees' nodes concatenated, each tree starting at its entry of ``roots``. scikit-learn fits it;
prediction walks all the trees at once in numpy (a row x tree matrix of node indices stepped
``depth`` times), so the engine does not import scikit-learn.

Its inputs (``INPUTS``) are the row's z of every metric and the recent mean z of the latency
metrics (``signature.RECENT``): a latency creep's first rows move latency alone, as noise does, and
only how long latency has been up tells them apart.

``unknown`` is a class of its own, learned from rows that stood out with no fault behind them
(noise, load swings), so a false alarm is diagnosed as such rather than forced into a kind.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.diagnosis.signature import METRICS, RECENT, RECENT_TAU_S, features
from engine.errors import ConfigError
from engine.records import DIAGNOSIS_KINDS

KINDS = DIAGNOSIS_KINDS

FORMAT = "selfheal-diagnosis/2"
"""2: a forest over ``INPUTS``. 1 (one tree over the metrics' z alone) is refused: retrain."""
INPUTS: tuple[str, ...] = METRICS + tuple(f"{m}/{RECENT_TAU_S / 60:.0f}min" for m in RECENT)
"""The trees' input columns: each metric's z, then each ``RECENT`` metric's mean z."""

TREES = 50
MAX_DEPTH = 12
MIN_LEAF = 5
CREEP_WEIGHT = 3.0
"""Classes are weighted to balance, and latency creep this much more: its first rows look like
noise, and on the training seeds' cross-validation (README) creep and ``unknown`` rows were both
above 0.9 with this weight and not without it."""


@dataclass(frozen=True)
class KindModel:
    """A fitted forest: per node its input, threshold and children (-1: a leaf; indices into the
    concatenated arrays, inside the node's tree), the probability of each class and the share of
    its tree's training weight that reached it; ``roots``: each tree's first node. ``info`` says
    how it was trained and evaluated."""

    classes: tuple[str, ...]
    roots: np.ndarray  # (trees,) int, increasing from 0
    feature: np.ndarray  # (nodes,) int; -2 at leaves (scikit-learn's convention)
    threshold: np.ndarray  # (nodes,)
    left: np.ndarray  # (nodes,) int
    right: np.ndarray  # (nodes,) int
    value: np.ndarray  # (nodes, classes) probabilities
    share: np.ndarray  # (nodes,) of the tree's training weight, 1 at the root
    inputs: tuple[str, ...] = INPUTS
    info: dict[str, Any] = field(default_factory=dict)
    _walk: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] = field(
        init=False, repr=False, compare=False
    )
    """(feature, threshold, left, right, depth) for ``proba``: a leaf is its own child, so every
    row x tree steps ``depth`` times, the deepest path's length, and stays on its leaf."""

    def __post_init__(self) -> None:
        nodes = np.arange(len(self.left))
        leaf = self.left < 0
        depth, frontier = 0, self.roots
        while not leaf[frontier].all():
            inner = frontier[~leaf[frontier]]
            frontier = np.unique(np.concatenate([self.left[inner], self.right[inner]]))  # a node once
            depth += 1
        walk = (
            np.where(leaf, 0, self.feature),
            np.where(leaf, 0.0, self.threshold),
            np.where(leaf, nodes, self.left),
            np.where(leaf, nodes, self.right),
            depth,
        )
        object.__setattr__(self, "_walk", walk)

    @classmethod
    def fit(
        cls,
        z: np.ndarray,
        recent: np.ndarray,
        labels: np.ndarray,
        *,
        trees: int = TREES,
        max_depth: int = MAX_DEPTH,
        seed: int = 0,
    ) -> KindModel:
        """Fit on signatures (``z`` and ``recent``, rows) and their kinds (``KINDS`` names),
        classes balanced and creeps weighted up (``CREEP_WEIGHT``)."""
        from sklearn.ensemble import RandomForestClassifier

        names, counts = np.unique(labels, return_counts=True)
        weight = {
            str(n): len(labels) / (len(names) * c) * (CREEP_WEIGHT if n == "latency_creep" else 1.0)
            for n, c in zip(names, counts, strict=True)
        }
        clf = RandomForestClassifier(
            n_estimators=trees,
            max_depth=max_depth,
            min_samples_leaf=MIN_LEAF,
            class_weight=weight,
            random_state=seed,
            n_jobs=1,
        )
        clf.fit(inputs(z, recent), labels)
        return cls.of_sklearn(clf)

    @classmethod
    def of_sklearn(cls, clf: Any) -> KindModel:
        """The arrays of a fitted ``RandomForestClassifier`` (its ``predict_proba`` is ``proba``)."""
        names = ("feature", "threshold", "left", "right", "value", "share")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        roots, offset = [], 0
        for estimator in clf.estimators_:
            tree = estimator.tree_
            roots.append(offset)
            value = tree.value[:, 0, :]
            parts["feature"].append(tree.feature.astype(np.int64))
            parts["threshold"].append(tree.threshold.astype(np.float64))
            for side, children in (("left", tree.children_left), ("right", tree.children_right)):
                parts[side].append(np.where(children >= 0, children + offset, -1).astype(np.int64))
            parts["value"].append(value / value.sum(axis=1, keepdims=True))
            parts["share"].append(tree.weighted_n_node_samples / tree.weighted_n_node_samples[0])
            offset += tree.node_count
        joined = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(tuple(str(k) for k in clf.classes_), np.asarray(roots, dtype=np.int64), **joined)

    @property
    def trees(self) -> int:
        return len(self.roots)

    @property
    def depth(self) -> int:
        """The longest path from a root to a leaf."""
        return self._walk[4]

    def proba(self, z: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """Probabilities of ``classes`` for signatures ``z`` and ``recent`` (one row or many)."""
        return self.proba_of_inputs(inputs(z, recent))

    def proba_of_inputs(self, x: np.ndarray) -> np.ndarray:
        """``proba`` of the trees' input rows (``INPUTS`` columns): the mean over the trees of
        each one's leaf. All rows and trees step together."""
        feature, threshold, left, right, depth = self._walk
        x = np.asarray(x).astype(np.float32)  # what scikit-learn fitted and compares in
        node = np.repeat(self.roots[None, :], len(x), axis=0)
        rows = np.arange(len(x))[:, None]
        for _ in range(depth):
            node = np.where(x[rows, feature[node]] <= threshold[node], left[node], right[node])
        return self.value[node].mean(axis=1)

    @functools.cached_property
    def version(self) -> str:
        """A content hash of the forest's questions: what the journal names the model by (worked
        out once: each engine, replay and chaos run names its model)."""
        questions = self.roots.tolist() + self.feature.tolist() + self.threshold.tolist()
        return f"kind-forest-{hashlib.sha256(json.dumps(questions).encode()).hexdigest()[:12]}"

    def predict(self, z: np.ndarray, recent: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[np.argmax(self.proba(z, recent), axis=1)]

    def leaning(self) -> np.ndarray:
        """Per class and input, how much the forest's splits on the input raise the class's
        probability as the input rises: over every split on it, the right child's probability
        minus the left's, weighted by the share of training weight the split divides, per tree.
        (classes, inputs); negative: the class is likelier as the input falls."""
        inner = np.flatnonzero(self.left >= 0)
        rise = (self.value[self.right[inner]] - self.value[self.left[inner]]) * self.share[inner, None]
        out = np.zeros((len(self.classes), len(self.inputs)))
        np.add.at(out.T, self.feature[inner], rise)
        return out / self.trees

    def summary(self, top: int = 3) -> str:
        """For people (``selfheal diagnosis show``): the forest's size and, per kind, the inputs
        whose rise (up) or fall (down) raises its probability most."""
        lean = self.leaning()
        lines = [
            f"{self.trees} trees, paths of at most {self.depth} questions, over {len(self.inputs)} inputs "
            "(each metric's z; a name/Nmin is its recent mean)",
            "per kind, the inputs that raise its probability most "
            "(up: as the input's z rises; down: as it falls):",
        ]
        for k, kind in enumerate(self.classes):
            order = np.argsort(-np.abs(lean[k]))[:top]
            said = ", ".join(
                f"{self.inputs[j]} {'up' if lean[k, j] > 0 else 'down'} ({abs(lean[k, j]):.2f})"
                for j in order
            )
            lines.append(f"  {kind:<18} {said}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "inputs": list(self.inputs),
            "roots": self.roots.tolist(),
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.round(4).tolist(),  # a probability to 0.0001, as a diagnosis says it
            "share": self.share.round(4).tolist(),
            "info": self.info,
        }

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "diagnosis model") -> KindModel:
        hint = "retrain it: selfheal diagnosis train --out FILE"
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{source}: format is {raw.get('format')!r}, expected {FORMAT!r}", hint=hint)
        try:
            classes = tuple(str(c) for c in raw["classes"])
            names = tuple(str(m) for m in raw["inputs"])
            ints = [np.asarray(raw[k], dtype=np.int64) for k in ("roots", "feature", "left", "right")]
            threshold, value, share = (
                np.asarray(raw[k], dtype=np.float64) for k in ("threshold", "value", "share")
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: unreadable ({exc})", hint=hint) from exc
        if names != INPUTS:
            raise ConfigError(f"{source}: trained on inputs {list(names)}, not {list(INPUTS)}", hint=hint)
        roots, feature, left, right = ints
        if not _fits(classes, names, roots, feature, threshold, left, right, value, share):
            raise ConfigError(f"{source}: the forest's arrays do not fit together", hint=hint)
        info = dict(raw.get("info") or {})
        return cls(classes, roots, feature, threshold, left, right, value, share, names, info)

    @classmethod
    def load(cls, path: Path) -> KindModel:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: cannot read the diagnosis model ({exc})", hint="check the path"
            ) from exc
        return cls.from_dict(raw, source=str(path))


def _fits(
    classes: tuple[str, ...],
    names: tuple[str, ...],
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    value: np.ndarray,
    share: np.ndarray,
) -> bool:
    """Whether the arrays make trees a walk cannot leave: one-dimensional where they should be,
    every tree's children after their parent and inside the tree, leaves without children, inputs
    among ``names``, every number finite (``proba`` and ``__post_init__`` rely on it)."""
    n = len(feature)
    if not (
        n > 0
        and roots.ndim == feature.ndim == left.ndim == right.ndim == threshold.ndim == share.ndim == 1
        and all(len(a) == n for a in (left, right, threshold, share))
        and value.shape == (n, len(classes))
        and len(roots) > 0
        and roots[0] == 0
        and bool(np.all(np.diff(roots) > 0))
        and roots[-1] < n
        and not [c for c in classes if c not in KINDS]
    ):
        return False
    end = np.repeat(np.append(roots[1:], n), np.diff(np.append(roots, n)))  # each node's tree's end
    index = np.arange(n)
    inner = left >= 0
    return (
        bool(np.all((left[inner] > index[inner]) & (left[inner] < end[inner])))
        and bool(np.all((right[inner] > index[inner]) & (right[inner] < end[inner])))
        and bool(np.all((left[~inner] == -1) & (right[~inner] == -1)))
        and bool(np.all((feature[inner] >= 0) & (feature[inner] < len(names))))
        and bool(np.isfinite(threshold).all() and np.isfinite(value).all() and np.isfinite(share).all())
        and bool(np.all(value >= 0) and np.all((share >= 0) & (share <= 1)))
    )


def inputs(z: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """The tree's input rows (``INPUTS``) from signatures: ``features`` of the z and recent means."""
    return features(np.hstack([np.atleast_2d(z), np.atleast_2d(recent)]))
