"""Offline data: scikit-learn's bundled digits, split and partitioned deterministically.

The server keeps the held-out split; each client takes its partition of the rest through
``flwr-datasets``' Dirichlet partitioner (label skew with concentration ``alpha``).
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
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Split(features[train], labels[train]), Split(features[test], labels[test])


def dirichlet_partition(
    train: Split, partition_id: int, num_partitions: int, alpha: float, seed: int
) -> Split:
    """Partition ``partition_id`` of ``num_partitions`` by a Dirichlet(alpha) over labels."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    dataset = Dataset.from_dict({"row": np.arange(len(train)), "label": train.labels})
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=max(1, min(10, len(train) // (2 * num_partitions))),
        self_balancing=False,
        seed=seed,
    )
    partitioner.dataset = dataset
    rows = np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)
    return Split(train.features[rows], train.labels[rows])
