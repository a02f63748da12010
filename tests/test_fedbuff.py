"""FedBuff mechanics against hand-computed values (docs/architecture.md, "Reference semantics")."""

import numpy as np
import pytest

from strategies import ClientUpdate, FedBuff, Outcome, StrategyOptions, WeightedSumBuffer
from strategies.chunked import CHUNK


def arrays(*values):
    return [np.array(values, dtype=np.float32)]


def update(client, delta, staleness=0, n=100):
    return ClientUpdate(client_id=client, delta=arrays(*delta), num_examples=n, staleness=staleness)


def fedbuff(initial, **options):
    return FedBuff(arrays(*initial), StrategyOptions(**options))


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


@pytest.mark.parametrize("size", [1, CHUNK + 1, 2 * CHUNK + 13])
def test_buffer_sum_is_the_float64_weighted_sum_exactly_and_leaves_deltas_alone(size):
    rng = np.random.default_rng(size)
    deltas = [
        [rng.normal(0, 1e-3, (size,)).astype(np.float32), rng.normal(0, 1, (2, 3)).astype(np.float32)] for _ in range(3)
    ]
    saved = [[d.copy() for d in delta] for delta in deltas]
    weights = [1.0, 0.7071067811865476, 0.3]
    buffer = WeightedSumBuffer()
    for client, (delta, weight) in enumerate(zip(deltas, weights)):
        buffer.add(client, delta, weight)
    total, _, _ = buffer.flush()
    for i in range(2):
        reference = sum(np.asarray(delta[i], np.float64) * w for delta, w in zip(deltas, weights))
        np.testing.assert_array_equal(total[i], reference)
    for delta, before in zip(deltas, saved):
        for d, b in zip(delta, before):
            np.testing.assert_array_equal(d, b)


def test_a_step_leaves_the_clients_deltas_alone():
    strategy = fedbuff([1.0, 1.0], buffer_size=1)
    delta = update(1, [0.5, -0.5])
    strategy.receive(delta)
    assert strategy.version == 1
    np.testing.assert_array_equal(delta.delta[0], [0.5, -0.5])


def test_fedbuff_steps_after_k_updates_with_staleness_weighted_sum_over_k():
    strategy = fedbuff([10.0, 10.0], buffer_size=2)
    first = strategy.receive(update(1, [2.0, 0.0], staleness=0))
    assert first.outcome is Outcome.ACCEPTED and not first.stepped
    assert (strategy.version, strategy.buffer_fill) == (0, 1)
    second = strategy.receive(update(2, [0.0, 4.0], staleness=3))  # weight 1/sqrt(4) = 0.5
    assert second.stepped and second.weight == pytest.approx(0.5)
    # pseudo-gradient = (1*[2,0] + 0.5*[0,4]) / K=2 = [1, 1]; server lr 1 -> w - g
    np.testing.assert_allclose(strategy.model[0], [9.0, 9.0])
    assert (strategy.version, strategy.buffer_fill) == (1, 0)


def test_weight_normalization_divides_by_the_sum_of_weights():
    strategy = fedbuff([10.0, 10.0], buffer_size=2, buffer_normalization="weight")
    strategy.receive(update(1, [2.0, 0.0], staleness=0))  # weight 1
    strategy.receive(update(2, [0.0, 4.0], staleness=3))  # weight 0.5
    # (1*[2,0] + 0.5*[0,4]) / 1.5 = [4/3, 4/3]
    np.testing.assert_allclose(strategy.model[0], [10 - 4 / 3, 10 - 4 / 3], rtol=1e-6)


def test_weight_normalization_cancels_staleness_when_a_whole_buffer_is_equally_stale():
    by_weight = fedbuff([0.0], buffer_size=2, buffer_normalization="weight")
    by_count = fedbuff([0.0], buffer_size=2, buffer_normalization="count")
    for strategy in (by_weight, by_count):
        strategy.receive(update(1, [2.0], staleness=3))
        strategy.receive(update(2, [4.0], staleness=3))
    np.testing.assert_allclose(by_weight.model[0], [-3.0])  # as if fresh
    np.testing.assert_allclose(by_count.model[0], [-1.5])  # halved: s(3) = 0.5


def test_a_buffer_with_zero_total_weight_applies_a_zero_pseudo_gradient():
    strategy = fedbuff(
        [1.0], buffer_size=2, buffer_normalization="weight", staleness_weight="threshold", staleness_cutoff=1
    )
    assert strategy.receive(update(1, [5.0], staleness=2)).weight == 0.0
    assert strategy.receive(update(2, [7.0], staleness=3)).stepped
    np.testing.assert_array_equal(strategy.model[0], [1.0])
    assert strategy.version == 1


def test_example_weights_multiply_staleness_weights():
    strategy = fedbuff([0.0], buffer_size=1, example_weight="linear", example_reference=50.0, server_lr=0.5)
    receipt = strategy.receive(update(1, [2.0], staleness=3, n=200))
    assert receipt.weight == pytest.approx(4.0 * 0.5)  # e(200) = 200/50, s(3) = 1/2
    np.testing.assert_allclose(strategy.model[0], [-0.5 * 2.0 * 2.0])


def test_fedbuff_drops_updates_staler_than_max_staleness():
    strategy = fedbuff([0.0], buffer_size=1, max_staleness=2)
    assert strategy.receive(update(1, [1.0], staleness=3)).outcome is Outcome.STALE
    assert strategy.version == 0
    assert strategy.receive(update(1, [1.0], staleness=2)).stepped


def test_down_weight_policy_keeps_stale_updates_times_stale_factor():
    strategy = fedbuff(
        [0.0],
        buffer_size=1,
        max_staleness=2,
        stale_policy="down-weight",
        stale_factor=0.25,
        staleness_weight="constant",
    )
    within = strategy.receive(update(1, [4.0], staleness=2))
    beyond = strategy.receive(update(2, [4.0], staleness=3))
    assert (within.outcome, beyond.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    assert (within.weight, beyond.weight) == (1.0, 0.25)
    np.testing.assert_allclose(strategy.model[0], [-4.0 - 1.0])


def test_a_second_update_from_one_client_waits_for_the_next_buffer():
    strategy = fedbuff([0.0], buffer_size=2, staleness_weight="constant")
    assert strategy.receive(update(1, [2.0])).outcome is Outcome.ACCEPTED
    assert strategy.receive(update(1, [100.0])).outcome is Outcome.ACCEPTED  # next buffer
    assert strategy.version == 0 and strategy.buffer_fill == 1
    assert strategy.receive(update(2, [4.0])).stepped  # first buffer: (2 + 4) / 2
    np.testing.assert_allclose(strategy.model[0], [-3.0])
    assert strategy.buffer_fill == 1  # client 1's second update is already waiting
    assert strategy.receive(update(3, [0.0])).stepped  # (100 + 0) / 2
    np.testing.assert_allclose(strategy.model[0], [-53.0])


def test_a_client_flooding_one_buffer_is_refused_past_the_pending_limit():
    strategy = fedbuff([0.0], buffer_size=2)
    outcomes = [strategy.receive(update(7, [1.0])).outcome for _ in range(FedBuff.max_pending_buffers + 1)]
    assert outcomes[-1] is Outcome.DUPLICATE
    assert outcomes[:-1] == [Outcome.ACCEPTED] * FedBuff.max_pending_buffers
    assert strategy.version == 0


def test_fedbuff_steps_the_configured_server_optimizer_and_exposes_its_state():
    strategy = fedbuff([0.0], buffer_size=1, server_optimizer="adam", server_lr=0.1)
    strategy.receive(update(1, [1.0]))
    assert strategy.optimizer.steps == 1
    assert set(strategy.optimizer.state_dict()) == {"steps", "m.0", "v.0"}
