"""FedBuff math against hand-computed values (DESIGN.md §4)."""

import math

import numpy as np
import pytest

from strategies import (
    ClientUpdate,
    FedBuff,
    FedBuffConfig,
    Outcome,
    ServerSGD,
    ServerSGDConfig,
    WeightedSumBuffer,
    example_weight,
    staleness_weight,
)


def arrays(*values):
    return [np.array(values, dtype=np.float32)]


def update(client, delta, staleness=0, n=10):
    return ClientUpdate(client_id=client, delta=arrays(*delta), num_examples=n, staleness=staleness)


@pytest.mark.parametrize(
    ("tau", "expected"), [(0, 1.0), (1, 1 / math.sqrt(2)), (3, 0.5), (8, 1 / 3)]
)
def test_polynomial_staleness_weight_is_inverse_sqrt_of_one_plus_tau(tau, expected):
    assert staleness_weight("polynomial", tau, 0.5) == pytest.approx(expected)


def test_constant_staleness_weight_ignores_staleness():
    assert staleness_weight("constant", 0) == staleness_weight("constant", 100) == 1.0


def test_weights_refuse_bad_inputs_with_clear_messages():
    with pytest.raises(ValueError, match="unknown staleness weight 'linear'"):
        staleness_weight("linear", 1)
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight("polynomial", -1)
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        example_weight("equal", 0)


def test_buffer_is_a_weighted_sum_and_refuses_a_second_update_from_one_client():
    buffer = WeightedSumBuffer()
    buffer.add(1, arrays(1.0, 2.0), 0.5)
    buffer.add(2, arrays(3.0, -1.0), 2.0)
    with pytest.raises(ValueError, match="already contributed"):
        buffer.add(1, arrays(9.0, 9.0), 1.0)
    total, count, weight = buffer.flush()
    np.testing.assert_allclose(total[0], [0.5 + 6.0, 1.0 - 2.0])
    assert (count, weight) == (2, 2.5)
    assert len(buffer) == 0


def test_server_sgd_with_momentum_matches_hand_computation():
    opt = ServerSGD(ServerSGDConfig(lr=0.5, momentum=0.9))
    w = arrays(1.0)
    w = opt.step(w, arrays(2.0))  # v = 2, w = 1 - 0.5*2 = 0
    np.testing.assert_allclose(w[0], [0.0])
    w = opt.step(w, arrays(1.0))  # v = 0.9*2 + 1 = 2.8, w = 0 - 1.4
    np.testing.assert_allclose(w[0], [-1.4], rtol=1e-6)


def test_fedbuff_steps_after_k_updates_with_staleness_weighted_mean_over_k():
    strategy = FedBuff(arrays(10.0, 10.0), FedBuffConfig(buffer_size=2))
    first = strategy.receive(update(1, [2.0, 0.0], staleness=0))
    assert first.outcome is Outcome.ACCEPTED and not first.stepped
    assert strategy.version == 0
    second = strategy.receive(update(2, [0.0, 4.0], staleness=3))  # weight 1/sqrt(4) = 0.5
    assert second.stepped and second.weight == pytest.approx(0.5)
    # pseudo-gradient = (1*[2,0] + 0.5*[0,4]) / K=2 = [1, 1]; server lr 1 -> w - g
    np.testing.assert_allclose(strategy.model[0], [9.0, 9.0])
    assert strategy.version == 1


def test_fedbuff_drops_updates_staler_than_max_staleness():
    strategy = FedBuff(arrays(0.0), FedBuffConfig(buffer_size=1, max_staleness=2))
    assert strategy.receive(update(1, [1.0], staleness=3)).outcome is Outcome.STALE
    assert strategy.version == 0
    assert strategy.receive(update(1, [1.0], staleness=2)).stepped


def test_a_second_update_from_one_client_waits_for_the_next_buffer():
    strategy = FedBuff(arrays(0.0), FedBuffConfig(buffer_size=2, staleness_weight="constant"))
    assert strategy.receive(update(1, [2.0])).outcome is Outcome.ACCEPTED
    assert strategy.receive(update(1, [100.0])).outcome is Outcome.ACCEPTED  # next buffer
    assert strategy.version == 0 and strategy.buffer_fill == 1
    assert strategy.receive(update(2, [4.0])).stepped  # first buffer: (2 + 4) / 2
    np.testing.assert_allclose(strategy.model[0], [-3.0])
    assert strategy.buffer_fill == 1  # client 1's second update is already waiting
    assert strategy.receive(update(3, [0.0])).stepped  # (100 + 0) / 2
    np.testing.assert_allclose(strategy.model[0], [-53.0])


def test_a_client_flooding_one_buffer_is_refused_past_the_pending_limit():
    strategy = FedBuff(arrays(0.0), FedBuffConfig(buffer_size=2))
    outcomes = [strategy.receive(update(7, [1.0])).outcome for _ in range(FedBuff.max_pending_buffers + 1)]
    assert outcomes[-1] is Outcome.DUPLICATE
    assert outcomes[:-1] == [Outcome.ACCEPTED] * FedBuff.max_pending_buffers
    assert strategy.version == 0


def test_k_equal_to_cohort_from_one_model_is_fedavg_with_equal_weights():
    initial = arrays(1.0, -2.0, 3.0)
    deltas = [np.array(d, dtype=np.float32) for d in ([0.3, 0.1, -0.2], [0.1, 0.5, 0.0], [-0.4, 0.0, 0.9])]
    strategy = FedBuff(initial, FedBuffConfig(buffer_size=3))
    for client, delta in enumerate(deltas):
        strategy.receive(ClientUpdate(client, [delta], 5, staleness=0))
    fedavg = initial[0] - np.mean(deltas, axis=0)
    np.testing.assert_allclose(strategy.model[0], fedavg, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, "buffer-size must be >= 1"),
        ({"staleness_weight": "hinge2"}, "staleness-weight must be one of"),
        ({"max_staleness": -1}, "max-staleness must be >= 0"),
    ],
)
def test_fedbuff_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FedBuffConfig(**kwargs)


def test_server_sgd_config_refuses_non_positive_lr():
    with pytest.raises(ValueError, match="server-lr must be > 0"):
        ServerSGDConfig(lr=0.0)
