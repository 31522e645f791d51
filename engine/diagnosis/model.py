"""The fault-kind model: one decision tree over a service's signature.

Why this model: it is small enough to read. Its questions are about named metrics ("precision
more than 4 sigmas down?", "memory up?"), ``rules()`` prints them, and each answer is the share of
training rows of each kind in its leaf. A linear model was tried first: it confuses a stale index
with a latency creep (both move few metrics), which needs a threshold on one metric, not a sum.
The model is a JSON document of arrays (no pickle: a bundle loads it without running code);
scikit-learn fits it, and prediction walks the arrays, so the engine does not import scikit-learn.

``unknown`` is a class of its own, learned from rows that stood out with no fault behind them
(noise, load swings), so a false alarm is diagnosed as such rather than forced into a kind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.diagnosis.signature import METRICS, features
from engine.errors import ConfigError
from engine.records import DIAGNOSIS_KINDS

KINDS = DIAGNOSIS_KINDS

FORMAT = "selfheal-diagnosis/1"


MAX_DEPTH = 8
MIN_LEAF = 5
SMOOTHING = 1.0
"""Added to each leaf's class counts: a leaf of five rows never says 'certainly'."""


@dataclass(frozen=True)
class KindModel:
    """A fitted tree: per node its feature, threshold and children (-1: a leaf), per leaf the
    probability of each class; ``info`` says how it was trained and evaluated."""

    classes: tuple[str, ...]
    feature: np.ndarray  # (nodes,) int; -2 at leaves (scikit-learn's convention)
    threshold: np.ndarray  # (nodes,)
    left: np.ndarray  # (nodes,) int
    right: np.ndarray  # (nodes,) int
    value: np.ndarray  # (nodes, classes) probabilities
    metrics: tuple[str, ...] = METRICS
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, z: np.ndarray, labels: np.ndarray, *, max_depth: int = MAX_DEPTH, seed: int = 0
    ) -> KindModel:
        """Fit on signatures ``z`` (rows) and their kinds (``KINDS`` names), classes balanced."""
        from sklearn.tree import DecisionTreeClassifier

        clf = DecisionTreeClassifier(
            max_depth=max_depth, min_samples_leaf=MIN_LEAF, class_weight="balanced", random_state=seed
        )
        clf.fit(features(z), labels)
        tree = clf.tree_
        counts = tree.value[:, 0, :] * tree.weighted_n_node_samples[:, None]
        value = (counts + SMOOTHING) / (counts + SMOOTHING).sum(axis=1, keepdims=True)
        return cls(
            tuple(str(k) for k in clf.classes_),
            tree.feature.astype(np.int64),
            tree.threshold.astype(np.float64),
            tree.children_left.astype(np.int64),
            tree.children_right.astype(np.int64),
            value,
        )

    def proba(self, z: np.ndarray) -> np.ndarray:
        """Probabilities of ``classes`` for signatures ``z`` (one row or many)."""
        x = features(np.atleast_2d(z))
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                return self.value[node]
            f = self.feature[node[inner]]
            go_left = x[rows[inner], f] <= self.threshold[node[inner]]
            node[inner] = np.where(go_left, self.left[node[inner]], self.right[node[inner]])

    @property
    def version(self) -> str:
        """A content hash of the tree: what the journal names the model by."""
        digest = hashlib.sha256(json.dumps(self.to_dict()["feature"] + self.to_dict()["threshold"]).encode())
        return f"kind-tree-{digest.hexdigest()[:12]}"

    def predict(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[np.argmax(self.proba(z), axis=1)]

    def rules(self) -> str:
        """The tree as indented questions, for people (``selfheal diagnosis show``)."""
        lines: list[str] = []

        def walk(node: int, depth: int) -> None:
            pad = "  " * depth
            if self.left[node] < 0:
                p = self.value[node]
                best = int(np.argmax(p))
                lines.append(f"{pad}-> {self.classes[best]} ({p[best]:.2f})")
                return
            metric = self.metrics[self.feature[node]]
            z = float(np.sign(self.threshold[node]) * np.expm1(abs(self.threshold[node])))
            lines.append(f"{pad}{metric} z <= {z:+.1f}:")
            walk(int(self.left[node]), depth + 1)
            lines.append(f"{pad}{metric} z > {z:+.1f}:")
            walk(int(self.right[node]), depth + 1)

        walk(0, 0)
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "metrics": list(self.metrics),
            "feature": self.feature.tolist(),
            "threshold": self.threshold.round(6).tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.round(6).tolist(),
            "info": self.info,
        }

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "diagnosis model") -> KindModel:
        hint = "retrain it: selfheal diagnosis train --out FILE"
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{source}: format is {raw.get('format')!r}, expected {FORMAT!r}", hint=hint)
        try:
            classes = tuple(str(c) for c in raw["classes"])
            metrics = tuple(str(m) for m in raw["metrics"])
            arrays = [np.asarray(raw[k], dtype=np.int64) for k in ("feature", "left", "right")]
            threshold = np.asarray(raw["threshold"], dtype=np.float64)
            value = np.asarray(raw["value"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: unreadable ({exc})", hint=hint) from exc
        if metrics != METRICS:
            raise ConfigError(f"{source}: trained on metrics {list(metrics)}, not {list(METRICS)}", hint=hint)
        feature, left, right = arrays
        n = len(feature)
        inner = left >= 0
        fits = (
            n > 0
            and all(len(a) == n for a in (left, right, threshold))
            and value.shape == (n, len(classes))
            and not [c for c in classes if c not in KINDS]
            and bool(np.all((left[inner] > np.flatnonzero(inner)) & (left[inner] < n)))
            and bool(np.all((right[inner] > np.flatnonzero(inner)) & (right[inner] < n)))
            and bool(np.all((feature[inner] >= 0) & (feature[inner] < len(metrics))))
            and bool(np.isfinite(threshold).all() and np.isfinite(value).all())
        )
        if not fits:
            raise ConfigError(f"{source}: the tree's arrays do not fit together", hint=hint)
        return cls(classes, feature, threshold, left, right, value, metrics, dict(raw.get("info") or {}))

    @classmethod
    def load(cls, path: Path) -> KindModel:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: cannot read the diagnosis model ({exc})", hint="check the path"
            ) from exc
        return cls.from_dict(raw, source=str(path))
