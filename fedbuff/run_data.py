"""The data of one run as its settings describe it: which dataset, which rows each client
holds, and which device tier each client is.

These serve the built-in tasks (:mod:`fedbuff.builtin_tasks`, whose knobs are the settings
here). The launcher (tiers for the node configs), every node (its own rows) and the
ServerApp (each tier's held-out data) call these with the same settings and get the same
answer, because everything below is deterministic from ``seed``. Imports numpy only;
``datasets`` / ``flwr-datasets`` load lazily inside :mod:`fedbuff.partitioners`, and only where
the split is not on disk yet (:mod:`fedbuff.partition_cache`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import numpy as np

from fedbuff import datasets, partition_cache, partitioners
from fedbuff.datasets import FederatedData

if TYPE_CHECKING:
    from fedbuff.builtin_tasks import BundledOptions as RunSettings


def load(settings: RunSettings) -> FederatedData:
    """The run's dataset (``dataset`` knob), from files on this machine."""
    return datasets.load(settings.dataset, seed=settings.seed, test_fraction=settings.test_fraction)


class _PartitionParams(TypedDict):
    """The partitioner keywords the settings and the data give (see :func:`fedbuff.partitioners.partition`)."""

    alpha: float
    classes_per_partition: int
    natural_ids: np.ndarray | None


def _params(settings: RunSettings, data: FederatedData) -> _PartitionParams:
    return {
        "alpha": settings.dirichlet_alpha,
        "classes_per_partition": settings.classes_per_partition,
        "natural_ids": data.train_ids,
    }


def client_rows(settings: RunSettings, data: FederatedData, partition_id: int, num_partitions: int) -> np.ndarray:
    """Training rows of client ``partition_id`` (``partitioner`` knob), from the run's cached split."""
    if settings.partitioner == "natural" or not 0 <= partition_id < num_partitions:
        # natural: one id group is far cheaper than all of them; a wrong id: the partitioner's error
        return partitioners.partition(
            settings.partitioner,
            data.train.labels,
            num_partitions,
            partition_id,
            settings.seed,
            **_params(settings, data),
        )
    return all_client_rows(settings, data, num_partitions)[partition_id]


def all_client_rows(settings: RunSettings, data: FederatedData, num_partitions: int) -> list[np.ndarray]:
    """Training rows of every client, in partition-id order (kept by :mod:`fedbuff.partition_cache`)."""
    params = _params(settings, data)

    def compute() -> list[np.ndarray]:
        return partitioners.all_partitions(
            settings.partitioner, data.train.labels, num_partitions, settings.seed, **params
        )

    if settings.partitioner == "natural" or num_partitions < 1:
        return compute()
    # the key is compute()'s own arguments, less the natural ids (only the natural partitioner reads them)
    keywords = {name: value for name, value in params.items() if name != "natural_ids"}
    split = {"partitioner": settings.partitioner, "seed": settings.seed, **keywords}
    return partition_cache.cached_split(data.train.labels, split, num_partitions, compute)


def client_tiers(settings: RunSettings, num_partitions: int, data: FederatedData | None = None) -> list[str]:
    """The device tier of each client: the ``tier-mix`` quotas, assigned independently of the
    data, or tied to the labels (``partitioner=tier-correlated`` with ``tier-strength`` > 0).

    ``data`` is loaded only when the assignment depends on it.
    """
    if settings.partitioner != "tier-correlated" or settings.tier_strength == 0:
        return partitioners.partition_tiers(
            "iid", np.zeros(0), num_partitions, settings.seed, tier_mix=settings.tier_mix
        )
    data = data or load(settings)
    return partitioners.partition_tiers(
        settings.partitioner,
        data.train.labels,
        num_partitions,
        settings.seed,
        strength=settings.tier_strength,
        tier_mix=settings.tier_mix,
        **_params(settings, data),
    )
