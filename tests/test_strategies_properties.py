"""Properties of buffered aggregation: arrival order does not matter, and it is linear."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies import ClientUpdate, FedBuff, StrategyOptions, WeightedSumBuffer

DIM = 3
values = st.floats(min_value=-10, max_value=10, allow_nan=False, width=32)
delta = arrays(np.float32, DIM, elements=values)
client = st.tuples(delta, st.integers(0, 20), st.integers(1, 1000))  # Δ, τ, n


def run(options, updates, initial=None):
    strategy = FedBuff([np.zeros(DIM, np.float32) if initial is None else initial], options)
    for client_id, (d, tau, n) in updates:
        strategy.receive(ClientUpdate(client_id, [d], n, tau))
    return strategy


@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(client, min_size=2, max_size=6),
    order=st.randoms(use_true_random=False),
    normalization=st.sampled_from(["count", "weight"]),
    optimizer=st.sampled_from(["sgd", "adam"]),
    example=st.sampled_from(["equal", "linear", "sqrt", "log"]),
)
def test_one_buffer_step_does_not_depend_on_arrival_order(updates, order, normalization, optimizer, example):
    options = StrategyOptions(
        buffer_size=len(updates),
        buffer_normalization=normalization,
        server_optimizer=optimizer,
        server_lr=0.1,
        example_weight=example,
    )
    tagged = list(enumerate(updates))
    shuffled = tagged[:]
    order.shuffle(shuffled)
    first, second = run(options, tagged), run(options, shuffled)
    assert first.version == second.version == 1
    np.testing.assert_allclose(first.model[0], second.model[0], rtol=1e-6, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(delta, delta, st.floats(0.0, 5.0)), min_size=1, max_size=5),
    a=st.floats(-3, 3),
    b=st.floats(-3, 3),
)
def test_the_weighted_sum_is_linear_in_the_deltas(pairs, a, b):
    def flush(pick):
        buffer = WeightedSumBuffer()
        for i, (x, y, w) in enumerate(pairs):
            buffer.add(i, [pick(x.astype(np.float64), y.astype(np.float64))], w)
        return buffer.flush()[0][0]

    combined = flush(lambda x, y: a * x + b * y)
    separate = a * flush(lambda x, y: x) + b * flush(lambda x, y: y)
    np.testing.assert_allclose(combined, separate, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(client, min_size=1, max_size=5),
    a=st.floats(-3, 3),
    b=st.floats(-3, 3),
    normalization=st.sampled_from(["count", "weight"]),
)
def test_a_fedbuff_step_with_server_sgd_is_linear_in_the_deltas(updates, a, b, normalization):
    options = StrategyOptions(buffer_size=len(updates), buffer_normalization=normalization)

    def step(scale_x, scale_y):  # model after one step from 0 is −g: compare −g's
        combined = [
            (i, (np.float32(scale_x) * d + np.float32(scale_y) * d[::-1], tau, n))
            for i, (d, tau, n) in enumerate(updates)
        ]
        return run(options, combined).model[0].astype(np.float64)

    np.testing.assert_allclose(step(a, b), a * step(1, 0) + b * step(0, 1), rtol=1e-5, atol=1e-4)
