"""Offline data: scikit-learn's bundled digits, split and partitioned deterministically.

The server keeps the held-out split; clients partition the rest (:mod:`fedbuff.run_data`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    """Features (float32, scaled to [0, 1]) and integer labels."""

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def digits_file() -> Path | None:
    """The digits CSV scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``), found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (pixels 0–16, labels), exactly what ``sklearn.datasets.load_digits`` returns.

    Importing ``sklearn.datasets`` costs 1.4 s of CPU, and every trainer and ServerApp loads the
    digits at start, so the file scikit-learn reads is read here directly; ``load_digits`` is the
    fallback where scikit-learn keeps it elsewhere.
    """
    path = digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def load_digits_split(seed: int, test_fraction: float) -> tuple[Split, Split]:
    """Train / held-out split of the 1,797 digits, the same for every process given ``seed``."""
    pixels, target = load_digits_arrays()
    features = (pixels / 16.0).astype(np.float32)
    labels = target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return Split(features[train], labels[train]), Split(features[test], labels[test])
