"""Partitioners (flwr-datasets over in-memory data) and tier assignment (fedbuff.partitioners)."""

from __future__ import annotations

import numpy as np
import pytest

from fedbuff import partitioners as P
from fedbuff.data import load_digits_split


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_digits_split(42, 0.2)[0].labels


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological", "tier-correlated"])
def test_partitions_are_deterministic_disjoint_and_cover(labels, name):
    first = P.all_partitions(name, labels, 8, seed=3, alpha=0.5)
    again = P.all_partitions(name, labels, 8, seed=3, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    rows = np.concatenate(first)
    assert len(rows) == len(np.unique(rows))
    if name != "pathological":  # pathological may leave a class unused (8 partitions x 2)
        assert len(rows) == len(labels)  # every row is somewhere
    # one partition alone (what a ClientApp computes) equals its share of the whole
    assert np.array_equal(P.partition(name, labels, 8, 5, seed=3, alpha=0.5), first[5])


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological"])
def test_another_seed_gives_another_partition(labels, name):
    a = P.partition(name, labels, 8, 0, seed=1, alpha=0.5)
    b = P.partition(name, labels, 8, 0, seed=2, alpha=0.5)
    assert not np.array_equal(a, b)


def test_iid_partitions_are_balanced(labels):
    sizes = [len(p) for p in P.all_partitions("iid", labels, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_pathological_holds_exactly_k_classes(labels):
    for rows in P.all_partitions("pathological", labels, 10, seed=0, classes_per_partition=3):
        assert len(np.unique(labels[rows])) == 3


def test_natural_partitions_hold_whole_ids():
    rng = np.random.default_rng(0)
    ids = rng.choice([f"role{i}" for i in range(23)], size=500)
    y = rng.integers(0, 5, size=500)
    parts = P.all_partitions("natural", y, 6, seed=4, natural_ids=ids)
    owners = {}
    for p, rows in enumerate(parts):
        for role in set(ids[rows]):
            assert owners.setdefault(role, p) == p  # a role never spans partitions
    assert sum(len(r) for r in parts) == 500
    assert all(np.array_equal(a, b) for a, b in zip(parts, P.all_partitions("natural", y, 6, seed=4, natural_ids=ids)))
    with pytest.raises(P.PartitionError, match="natural ids"):
        P.partition("natural", y, 6, 0, seed=4)
    with pytest.raises(P.PartitionError, match="cannot fill"):
        P.partition("natural", y, 30, 0, seed=4, natural_ids=ids)


def test_bad_names_and_ids(labels):
    with pytest.raises(P.PartitionError, match="unknown"):
        P.partition("nope", labels, 2, 0, seed=0)
    with pytest.raises(P.PartitionError, match="outside"):
        P.partition("iid", labels, 2, 2, seed=0)


@pytest.mark.parametrize("n", [3, 4, 7, 10, 50, 200, 1000])
def test_tier_quotas_follow_the_mix_and_keep_every_tier(n):
    quota = P.tier_quotas(n)
    assert sum(quota.values()) == n
    assert min(quota.values()) >= 1  # 0.5% high tier still exists with few clients
    for tier, share in P.TIER_MIX.items():
        assert abs(quota[tier] - share * n) <= 1.0 + (1 if share * n < 1 else 0)


def test_tier_quotas_with_fewer_clients_than_tiers():
    assert P.tier_quotas(1) == {"high": 0, "mid": 0, "low": 1}
    assert P.tier_quotas(2) == {"high": 0, "mid": 1, "low": 1}


def test_tier_mix_is_validated():
    with pytest.raises(P.PartitionError):
        P.parse_tier_mix("low=1,mid=1")
    with pytest.raises(P.PartitionError):
        P.parse_tier_mix("low=1,mid=-1,high=1")
    assert P.parse_tier_mix("low=2,mid=1,high=1")["low"] == 0.5


def test_assign_tiers_is_deterministic_and_respects_quotas(labels):
    parts = P.all_partitions("tier-correlated", labels, 20, seed=9, alpha=0.3)
    client_labels = [labels[p] for p in parts]
    for strength in (0.0, 100.0):
        tiers = P.assign_tiers(client_labels, 9, strength=strength)
        assert tiers == P.assign_tiers(client_labels, 9, strength=strength)
        assert {t: tiers.count(t) for t in P.TIERS} == P.tier_quotas(20)
    assert P.partition_tiers("tier-correlated", labels, 20, 9, strength=100.0, alpha=0.3) == P.assign_tiers(
        client_labels, 9, strength=100.0, num_classes=10
    )


def test_independent_baseline_ignores_the_data(labels):
    """strength 0: the same tiers whatever labels the clients hold."""
    parts = P.all_partitions("dirichlet", labels, 15, seed=5, alpha=0.3)
    real = P.assign_tiers([labels[p] for p in parts], 5, strength=0.0)
    shuffled = P.assign_tiers([np.zeros(len(p), dtype=np.int64) for p in parts], 5, strength=0.0)
    assert real == shuffled == P.partition_tiers("dirichlet", labels, 15, 5, alpha=0.3)


def _mean_divergence(labels, strength: float, seeds=range(6)) -> float:
    """Mean JS divergence (bits) between the low and mid tiers' pooled label histograms.

    The single high-tier client is left out: one client's label skew says nothing about
    correlation (it diverges from the rest at any strength).
    """
    values = []
    for seed in seeds:
        parts = P.all_partitions("tier-correlated", labels, 40, seed=seed, alpha=0.3)
        client_labels = [labels[p] for p in parts]
        tiers = P.assign_tiers(client_labels, seed, strength=strength)
        keep = [i for i, t in enumerate(tiers) if t != "high"]
        values.append(P.tier_label_divergence([client_labels[i] for i in keep], [tiers[i] for i in keep], 10))
    return float(np.mean(values))


def test_tier_correlated_strength_separates_label_distributions(labels):
    weak = _mean_divergence(labels, 0.0)
    strong = _mean_divergence(labels, 100.0)
    # Measured on digits, 40 clients, alpha 0.3, seeds 0-5: weak 0.049 bits, strong 0.147.
    assert weak < 0.08
    assert strong > 0.10
    assert strong > 2.0 * weak


def test_strong_correlation_sends_each_label_group_to_its_tier():
    """Clients holding one class each: a huge strength puts every client in its group's tier."""
    groups = P.label_groups(10, seed=1)
    client_labels = [np.full(20, c) for c in range(10)]
    tiers = P.assign_tiers(client_labels, 1, strength=1e6, num_classes=10)
    for c, tier in enumerate(tiers):
        assert c in groups[tier]


def test_jensen_shannon_bounds():
    assert P.jensen_shannon(np.array([1, 0]), np.array([1, 0])) == pytest.approx(0.0)
    assert P.jensen_shannon(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
