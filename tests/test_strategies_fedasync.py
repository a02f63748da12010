"""FedAsync (Xie et al. 2019): w ← (1 − α·s(τ))·w + α·s(τ)·w_client, w_client = w_dispatch − Δ."""

import numpy as np
import pytest

from strategies import ClientUpdate, FedAsync, Outcome, StrategyOptions


def update(client, delta, staleness=0):
    return ClientUpdate(client, [np.array(delta, dtype=np.float32)], 10, staleness)


def fedasync(initial, **options):
    options = StrategyOptions(strategy="fedasync", **options)
    return FedAsync([np.array(initial, dtype=np.float32)], options)


def test_mixing_matches_hand_computation():
    strategy = fedasync([10.0, 0.0], fedasync_alpha=0.5, staleness_weight="constant")
    receipt = strategy.receive(update(1, [2.0, -4.0]))
    # w_client = [10, 0] - [2, -4] = [8, 4]; w = 0.5*[10, 0] + 0.5*[8, 4] = [9, 2]
    assert (receipt.outcome, receipt.weight, receipt.stepped) == (Outcome.ACCEPTED, 0.5, True)
    np.testing.assert_allclose(strategy.model[0], [9.0, 2.0])
    assert strategy.version == 1


def test_mixing_weight_is_alpha_times_staleness_weight():
    strategy = fedasync([4.0], fedasync_alpha=0.6, staleness_exponent=0.5)
    strategy.receive(update(1, [0.0]))
    strategy.receive(update(2, [0.0]))
    strategy.receive(update(3, [0.0]))
    receipt = strategy.receive(update(4, [4.0], staleness=3))  # β = 0.6 / sqrt(4) = 0.3
    assert receipt.weight == pytest.approx(0.3)
    # the model never moved (zero deltas): w_dispatch = 4, w_client = 0 -> 0.7*4
    np.testing.assert_allclose(strategy.model[0], [2.8], rtol=1e-6)


def test_a_stale_update_is_rebuilt_on_the_model_it_was_dispatched_with():
    strategy = fedasync([10.0, 0.0], fedasync_alpha=0.5, staleness_weight="constant")
    strategy.receive(update(1, [2.0, -4.0]))  # version 1: [9, 2]
    strategy.receive(update(2, [4.0, 0.0], staleness=1))  # dispatched at version 0
    # w_client = [10, 0] - [4, 0] = [6, 0] (not [9, 2] - [4, 0]); w = 0.5*[9, 2] + 0.5*[6, 0]
    np.testing.assert_allclose(strategy.model[0], [7.5, 1.0])
    assert strategy.version == 2


def test_updates_older_than_max_staleness_are_stale_and_do_not_step():
    strategy = fedasync([0.0], max_staleness=2)
    for client in range(5):
        strategy.receive(update(client, [1.0]))
    assert strategy.receive(update(9, [1.0], staleness=3)).outcome is Outcome.STALE
    assert strategy.version == 5
    assert strategy.receive(update(9, [1.0], staleness=2)).stepped


def test_without_a_limit_the_history_is_bounded_and_older_updates_are_stale():
    strategy = fedasync([0.0])
    for client in range(FedAsync.max_history + 5):
        strategy.receive(update(client, [0.1]))
    oldest = FedAsync.max_history
    assert strategy.receive(update(99, [1.0], staleness=oldest + 1)).outcome is Outcome.STALE
    assert strategy.receive(update(99, [1.0], staleness=oldest)).outcome is Outcome.ACCEPTED


def test_down_weighted_updates_mix_with_alpha_times_stale_factor():
    strategy = fedasync(
        [1.0],
        fedasync_alpha=0.5,
        staleness_weight="constant",
        max_staleness=1,
        stale_policy="down-weight",
        stale_factor=0.2,
    )
    strategy.receive(update(1, [0.0]))
    strategy.receive(update(2, [0.0]))
    receipt = strategy.receive(update(3, [1.0], staleness=2))  # β = 0.5 * 0.2
    assert receipt.outcome is Outcome.ACCEPTED and receipt.weight == pytest.approx(0.1)
    np.testing.assert_allclose(strategy.model[0], [0.9], rtol=1e-6)  # 0.9*1 + 0.1*(1 - 1)


def test_staleness_beyond_the_first_version_is_stale():
    strategy = fedasync([0.0])
    assert strategy.receive(update(1, [1.0], staleness=1)).outcome is Outcome.STALE
    assert strategy.version == 0
