"""Partitioners over in-memory data, and device tiers that may follow the data.

Every partitioner runs ``flwr-datasets`` over a ``datasets.Dataset.from_dict`` holding
row indices, labels and (for ``natural``) a natural id, so nothing is downloaded. Each
process computes only its own partition, and every process gets the same answer given the
same ``seed``: the launcher, the ClientApps and the ServerApp all agree without talking.

Names (``partitioner`` run-config knob):

- ``iid``: a seeded shuffle cut into equal shards (``IidPartitioner``).
- ``dirichlet``: label skew, Dirichlet(``alpha``) over labels per class (``DirichletPartitioner``).
- ``pathological``: each partition holds exactly ``classes_per_partition`` classes
  (``PathologicalPartitioner``, ``first-deterministic`` so every class is used when there
  are at least as many partitions as classes).
- ``natural``: by writer / speaking role (``NaturalIdPartitioner``); with more ids than
  partitions, ids are shuffled (seeded) and dealt round-robin, so a partition holds whole ids.
- ``tier-correlated``: the rows of ``dirichlet``; what differs is :func:`assign_tiers`,
  which ties each partition's device tier to its dominant labels.

Tiers (docs/heterogeneity.md): :func:`tier_quotas` turns the tier mix (low 53%, mid 46.5%, high
0.5%) into exact client counts, every tier at least one client once there are 3 or more;
:func:`assign_tiers` decides which client gets which tier, independently of the data
(``strength`` 0, the baseline) or tied to label groups (large ``strength``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

PARTITIONERS = ("iid", "dirichlet", "pathological", "natural", "tier-correlated")
TIERS = ("high", "mid", "low")  # the same order as fedbuff.settings.DEVICE_TIERS
TIER_MIX: dict[str, float] = {"low": 0.53, "mid": 0.465, "high": 0.005}
DEFAULT_TIER_MIX = "low=0.53,mid=0.465,high=0.005"


class PartitionError(ValueError):
    """A partitioner name or parameter is wrong; the message names it."""


# ---------------------------------------------------------------------------------------
# row partitions


def partition(
    name: str,
    labels: np.ndarray,
    num_partitions: int,
    partition_id: int,
    seed: int,
    *,
    alpha: float = 1.0,
    classes_per_partition: int = 2,
    natural_ids: Sequence[object] | np.ndarray | None = None,
    min_partition_size: int | None = None,
) -> np.ndarray:
    """Row indices (sorted int64) of partition ``partition_id`` of ``num_partitions``.

    ``labels`` are the training labels (one per row); ``natural_ids`` (one per row) are
    needed by ``natural`` only. Deterministic from ``seed``.
    """
    if name not in PARTITIONERS:
        raise PartitionError(f"partitioner {name!r} is unknown; choose one of {PARTITIONERS}")
    if num_partitions < 1:
        raise PartitionError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    labels = np.asarray(labels)
    if name == "natural":
        rows = _natural(labels, natural_ids, num_partitions, partition_id, seed)
    else:
        partitioner = _make(
            name,
            labels,
            num_partitions,
            seed,
            alpha=alpha,
            classes_per_partition=classes_per_partition,
            min_partition_size=min_partition_size,
        )
        rows = _rows(partitioner, partition_id)
    return np.sort(rows)


def _rows(partitioner, partition_id: int) -> np.ndarray:
    try:
        return np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)
    except ValueError as err:  # DirichletPartitioner gives up after 10 draws
        raise PartitionError(f"{err} (raise dirichlet-alpha, or use fewer partitions)") from err


def all_partitions(name: str, labels: np.ndarray, num_partitions: int, seed: int, **params: object) -> list[np.ndarray]:
    """Row indices of every partition (what the launcher and the server need for tiers)."""
    labels = np.asarray(labels)
    if name == "natural":
        return [
            partition(name, labels, num_partitions, p, seed, **params)  # type: ignore[arg-type]
            for p in range(num_partitions)
        ]
    if num_partitions < 1:
        raise PartitionError(f"num-partitions must be >= 1, got {num_partitions}")
    keep = {k: v for k, v in params.items() if k != "natural_ids"}
    partitioner = _make(name, labels, num_partitions, seed, **keep)  # type: ignore[arg-type]
    return [np.sort(_rows(partitioner, p)) for p in range(num_partitions)]


def _make(
    name: str,
    labels: np.ndarray,
    num_partitions: int,
    seed: int,
    *,
    alpha: float = 1.0,
    classes_per_partition: int = 2,
    min_partition_size: int | None = None,
):
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    n = len(labels)
    if n < num_partitions:
        raise PartitionError(f"{n} rows cannot fill {num_partitions} partitions")
    rows = np.arange(n, dtype=np.int64)
    if name == "iid":
        # IidPartitioner cuts contiguous shards: shuffle first so shards are random.
        rows = np.random.default_rng(seed).permutation(n)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif name in ("dirichlet", "tier-correlated"):
        if not alpha > 0:
            raise PartitionError(f"dirichlet-alpha must be > 0, got {alpha}")
        if min_partition_size is None:
            # 10 rows, or a twentieth of the mean where partitions are small (Fashion-MNIST's 60,000
            # rows over 1,000 clients at alpha 0.3: flwr-datasets cannot give every one 10)
            min_partition_size = max(1, min(10, n // (20 * num_partitions)))
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            seed=seed,
        )
    elif name == "pathological":
        num_classes = len(np.unique(labels))
        if not 1 <= classes_per_partition <= num_classes:
            raise PartitionError(f"classes-per-partition must be in [1, {num_classes}], got {classes_per_partition}")
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=classes_per_partition,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    else:  # pragma: no cover - guarded by the callers
        raise PartitionError(f"partitioner {name!r} is unknown")
    partitioner.dataset = Dataset.from_dict({"row": rows, "label": labels[rows]})
    return partitioner


def _natural(labels: np.ndarray, natural_ids, num_partitions: int, partition_id: int, seed: int) -> np.ndarray:
    if natural_ids is None:
        raise PartitionError(
            "partitioner 'natural' needs a dataset with natural ids (writer / speaking role), e.g. dataset=shakespeare"
        )
    ids = np.asarray(natural_ids).astype(str)
    if len(ids) != len(labels):
        raise PartitionError(f"{len(ids)} natural ids for {len(labels)} rows")
    unique = np.unique(ids)
    if len(unique) < num_partitions:
        raise PartitionError(f"{len(unique)} natural ids cannot fill {num_partitions} partitions")
    # Deal the (seeded-shuffled) ids round-robin: partition p holds group p.
    order = np.random.default_rng(seed).permutation(len(unique))
    group_of = {unique[i]: rank % num_partitions for rank, i in enumerate(order)}
    groups = np.fromiter((group_of[i] for i in ids), dtype=np.int64, count=len(ids))

    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    # Rows sorted by group, so that NaturalIdPartitioner (ids in order of appearance)
    # numbers partition p as group p; the mapping is checked, not assumed.
    rows = np.argsort(groups, kind="stable")
    partitioner = NaturalIdPartitioner(partition_by="group")
    partitioner.dataset = Dataset.from_dict({"row": rows, "group": groups[rows]})
    part = partitioner.load_partition(partition_id)
    if partitioner.partition_id_to_natural_id[partition_id] != partition_id:  # pragma: no cover
        raise PartitionError("NaturalIdPartitioner numbered the id groups unexpectedly")
    return np.asarray(part["row"], dtype=np.int64)


# ---------------------------------------------------------------------------------------
# device tiers


def parse_tier_mix(text: str | Mapping[str, float]) -> dict[str, float]:
    """``"low=0.53,mid=0.465,high=0.005"`` -> shares over the three tiers, normalised."""
    if isinstance(text, Mapping):
        items = dict(text)
    else:
        items = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            tier, sep, value = item.partition("=")
            try:
                items[tier.strip()] = float(value) if sep else math.nan
            except ValueError:
                items[tier.strip()] = math.nan
    bad = [t for t, v in items.items() if t not in TIERS or not 0 <= v < math.inf]
    missing = set(TIERS) - set(items)
    if bad or missing or sum(items.values()) <= 0:
        raise PartitionError(f"tier-mix {text!r}: give TIER=SHARE for each of {TIERS}, shares >= 0 and not all 0")
    total = sum(items.values())
    return {t: items[t] / total for t in TIERS}


def tier_quotas(num_partitions: int, tier_mix: str | Mapping[str, float] = DEFAULT_TIER_MIX) -> dict[str, int]:
    """How many clients each tier gets: largest-remainder shares of the tier mix.

    With ``num_partitions >= 3`` every tier with a positive share gets at least one client
    (0.5% high-tier phones would otherwise vanish from every small federation): a missing
    tier takes one client from the tier that is furthest above its exact share. With fewer
    clients the most common tiers are kept.
    """
    mix = parse_tier_mix(tier_mix)
    exact = {t: mix[t] * num_partitions for t in TIERS}
    quota = {t: math.floor(exact[t]) for t in TIERS}
    by_remainder = sorted(TIERS, key=lambda t: (-(exact[t] - quota[t]), -mix[t], t))
    for t in by_remainder[: num_partitions - sum(quota.values())]:
        quota[t] += 1
    present = [t for t in TIERS if mix[t] > 0]
    if num_partitions >= len(present):
        for t in sorted(present, key=lambda t: mix[t]):
            if quota[t] == 0:
                donor = max((d for d in present if quota[d] > 1), key=lambda d: (quota[d] - exact[d], mix[d]))
                quota[donor] -= 1
                quota[t] = 1
    return quota


def label_groups(
    num_classes: int, tier_mix: str | Mapping[str, float] = DEFAULT_TIER_MIX, seed: int = 0
) -> dict[str, list[int]]:
    """Split the classes into one group per tier, sized like the tier mix (at least one
    class each when there are enough classes), after a seeded shuffle of the classes.

    Sizing groups like the mix keeps the label marginal of the federation unchanged when
    tiers follow label groups: a tier with 53% of the clients holds ~53% of the classes.
    """
    sizes = tier_quotas(num_classes, tier_mix)
    classes = np.random.default_rng([seed, 0x7137]).permutation(num_classes).tolist()
    groups, start = {}, 0
    for t in TIERS:
        groups[t] = sorted(classes[start : start + sizes[t]])
        start += sizes[t]
    return groups


def assign_tiers(
    client_labels: Sequence[np.ndarray],
    seed: int,
    *,
    strength: float = 0.0,
    tier_mix: str | Mapping[str, float] = DEFAULT_TIER_MIX,
    num_classes: int | None = None,
) -> list[str]:
    """The device tier of each client, given the labels each client holds.

    1. Quotas: :func:`tier_quotas` fixes how many clients each tier gets, so the tier mix
       holds exactly whatever the data.
    2. Affinity: classes are split into per-tier label groups (:func:`label_groups`); the
       affinity ``a_i[t]`` of client ``i`` is the share of its examples in tier ``t``'s group.
    3. Dirichlet over tiers: client ``i`` draws a preference ``q_i ~ Dirichlet(1 + strength
       × a_i)``. ``strength = 0`` gives ``Dirichlet(1, 1, 1)`` whatever the data: the
       independent baseline. Large ``strength`` concentrates ``q_i`` on the tier of its
       dominant labels.
    4. Matching: tiers are filled rarest first, each taking the clients (not yet placed)
       with the highest preference for it, up to its quota.

    Deterministic from ``seed``; the same for every process that sees the same partitions.
    """
    if strength < 0 or not math.isfinite(strength):
        raise PartitionError(f"tier-strength must be a finite number >= 0, got {strength}")
    n = len(client_labels)
    if n == 0:
        return []
    if num_classes is None:
        num_classes = 1 + max((int(np.max(y)) for y in client_labels if len(y)), default=0)
    mix = parse_tier_mix(tier_mix)
    quota = tier_quotas(n, mix)
    groups = label_groups(num_classes, mix, seed)
    group_of = np.zeros(num_classes, dtype=np.int64)
    for k, t in enumerate(TIERS):
        group_of[groups[t]] = k
    affinity = np.zeros((n, len(TIERS)))
    for i, y in enumerate(client_labels):
        y = np.asarray(y, dtype=np.int64)
        if len(y):
            affinity[i] = np.bincount(group_of[y], minlength=len(TIERS)) / len(y)
    rng = np.random.default_rng([seed, 0x71E5])
    preference = np.stack([rng.dirichlet(1.0 + strength * affinity[i]) for i in range(n)])
    tiers: list[str | None] = [None] * n
    for t in sorted(TIERS, key=lambda t: (mix[t], TIERS.index(t))):
        k = TIERS.index(t)
        free = [i for i in range(n) if tiers[i] is None]
        free.sort(key=lambda i: (-preference[i, k], i))
        for i in free[: quota[t]]:
            tiers[i] = t
    return [t for t in tiers if t is not None]


def partition_tiers(
    name: str,
    labels: np.ndarray,
    num_partitions: int,
    seed: int,
    *,
    strength: float = 0.0,
    tier_mix: str | Mapping[str, float] = DEFAULT_TIER_MIX,
    **params: object,
) -> list[str]:
    """Tiers of all partitions of ``name``: what the launcher writes into each node config.

    ``tier-correlated`` uses ``strength``; every other partitioner is the independent
    baseline (``strength`` ignored, tiers drawn from the mix regardless of data).
    """
    labels = np.asarray(labels)
    if name != "tier-correlated":
        strength = 0.0
    if strength == 0.0:  # no need to partition: the assignment ignores the data
        empty = [np.zeros(0, dtype=np.int64)] * num_partitions
        return assign_tiers(empty, seed, strength=0.0, tier_mix=tier_mix, num_classes=1)
    parts = all_partitions(name, labels, num_partitions, seed, **params)
    num_classes = int(labels.max()) + 1
    return assign_tiers([labels[p] for p in parts], seed, strength=strength, tier_mix=tier_mix, num_classes=num_classes)


# ---------------------------------------------------------------------------------------
# fairness diagnostics


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Normalised class histogram (all zeros for no labels)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    return counts / counts.sum() if counts.sum() else counts


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits (0 = same distribution, 1 = disjoint supports)."""
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def tier_label_divergence(client_labels: Sequence[np.ndarray], tiers: Sequence[str], num_classes: int) -> float:
    """Largest Jensen–Shannon divergence between any two tiers' pooled label histograms."""
    pooled: dict[str, list[np.ndarray]] = {}
    for y, t in zip(client_labels, tiers):
        pooled.setdefault(t, []).append(np.asarray(y, dtype=np.int64))
    hists = [label_histogram(np.concatenate(v), num_classes) for v in pooled.values()]
    hists = [h for h in hists if h.sum() > 0]
    return max((jensen_shannon(a, b) for i, a in enumerate(hists) for b in hists[i + 1 :]), default=0.0)
