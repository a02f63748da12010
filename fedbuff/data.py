"""Offline data: scikit-learn's bundled digits, split and partitioned deterministically.

The server keeps the held-out split; clients partition the rest (:mod:`fedbuff.run_data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Features (float32, scaled to [0, 1]) and integer labels."""

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_digits_split(seed: int, test_fraction: float) -> tuple[Split, Split]:
    """Train / held-out split of the 1,797 digits, the same for every process given ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return Split(features[train], labels[train]), Split(features[test], labels[test])
