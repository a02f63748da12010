"""Reference equivalences (docs/architecture.md, "Reference semantics"), checked against
independent numpy references and Flower's own FedAvg.

The global model is stored as float32 and every server step is computed in float64, so
"equal" here means equal up to float32 rounding of each stored model: rtol = 1e-6 and
atol = 1e-6 on values of order 1.
"""

import numpy as np
import pytest

from strategies import ClientUpdate, FedBuff, ServerAdam, StrategyOptions, build_strategy

TOL = {"rtol": 1e-6, "atol": 1e-6}
rng = np.random.default_rng(7)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def feed(strategy, deltas, staleness=None, num_examples=None):
    for i, delta in enumerate(deltas):
        tau = 0 if staleness is None else staleness[i]
        n = 100 if num_examples is None else num_examples[i]
        strategy.receive(ClientUpdate(i, [f32(delta)], n, tau))


def test_k_equal_to_the_cohort_from_one_model_is_fedavg():
    initial = f32(rng.normal(size=5))
    trained = f32(initial + rng.normal(scale=0.1, size=(4, 5)))
    strategy = FedBuff([initial], StrategyOptions(buffer_size=4))
    feed(strategy, initial - trained)
    assert strategy.version == 1
    np.testing.assert_allclose(strategy.model[0], trained.astype(np.float64).mean(axis=0), **TOL)


def test_linear_example_weights_divided_by_their_sum_are_example_weighted_fedavg():
    initial = f32(rng.normal(size=5))
    trained = f32(initial + rng.normal(scale=0.1, size=(4, 5)))
    n = np.array([10, 250, 40, 700])
    options = StrategyOptions(buffer_size=4, example_weight="linear", buffer_normalization="weight")
    strategy = FedBuff([initial], options)
    feed(strategy, initial - trained, num_examples=n)
    expected = (n[:, None] * trained.astype(np.float64)).sum(axis=0) / n.sum()
    np.testing.assert_allclose(strategy.model[0], expected, **TOL)


def test_k_one_is_plain_async_sgd_on_staleness_weighted_deltas():
    staleness = [0, 3, 1, 8, 0, 2]
    deltas = f32(rng.normal(size=(6, 4)))
    strategy = FedBuff([f32(np.ones(4))], StrategyOptions(buffer_size=1, server_lr=0.5))
    w = f32(np.ones(4))
    for i, (delta, tau) in enumerate(zip(deltas, staleness, strict=True)):
        strategy.receive(ClientUpdate(i, [delta], 100, tau))
        w = f32(w - 0.5 * (1 + tau) ** -0.5 * delta.astype(np.float64))  # w ← w − lr·s(τ)·Δ
        np.testing.assert_allclose(strategy.model[0], w, **TOL)
    assert strategy.version == len(deltas)


def reddi_fedadam(x, client_models, m, v, eta, beta1, beta2, tau):
    """One round of Reddi et al. (2021) Algorithm 2, FedAdam, written from the paper."""
    delta = np.mean([xi.astype(np.float64) - x for xi in client_models], axis=0)
    m = beta1 * m + (1 - beta1) * delta
    v = beta2 * v + (1 - beta2) * delta**2
    return f32(x + eta * m / (np.sqrt(v) + tau)), m, v


def test_fedbuff_with_fedadam_from_one_model_is_the_synchronous_fedadam_step():
    hyper = {"eta": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    options = StrategyOptions(
        buffer_size=3,
        server_optimizer="adam",
        server_lr=hyper["eta"],
        server_beta1=hyper["beta1"],
        server_beta2=hyper["beta2"],
        server_tau=hyper["tau"],
    )
    x = f32(rng.normal(size=6))
    strategy = FedBuff([x], options)
    m, v = np.zeros(6), np.full(6, hyper["tau"] ** 2)
    for _ in range(3):  # three rounds, so the moments carry over
        clients = [f32(x - rng.normal(scale=0.1, size=6)) for _ in range(3)]
        feed(strategy, [x - c for c in clients])
        x, m, v = reddi_fedadam(x, clients, m, v, **hyper)
        np.testing.assert_allclose(strategy.model[0], x, **TOL)


# "With Adam on the server, FedBuff(K) matches sync only with local lr ÷ K" is a common
# reading of the equivalences (docs/architecture.md, "Reference semantics"); it is not what
# holds. What holds exactly, tested below with one local SGD step on quadratic clients
# f_i(w) = ½‖w − c_i‖², so that Δ_i = lr_local·(w − c_i) is linear in the local lr:
#  1. FedBuff(K = cohort) from one model ≡ the sync step, for any server optimizer, with no
#     lr change (the test above for Adam; the sync row below for SGD).
#  2. SGD server: the same K updates applied one at a time (K = 1, constant weights) move
#     the model K times as far as the sync step; dividing the local lr by K restores it
#     exactly (equivalently: a summed buffer needs local lr ÷ K to match a ÷K buffer).
#  3. Adam server: no lr rescaling restores it. Adam's step m/(√v + τ) is invariant to the
#     scale of the pseudo-gradient up to τ, so local lr ÷ K (or ÷K normalisation) barely
#     changes an Adam step, and K separate Adam steps stay far from one sync Adam step.

CENTERS = f32([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0], [0.0, 0.0]])
W0 = f32([0.5, 0.5])
K = len(CENTERS)


def one_local_step(w, lr):
    return [f32(lr * (w - c)) for c in CENTERS]


def run(options, deltas, concurrency=K):
    strategy = build_strategy(options, [W0], concurrency)
    # all dispatched at version 0: with K = 1 they arrive with staleness 0, 1, 2, ...
    for i, delta in enumerate(deltas):
        strategy.receive(ClientUpdate(i, [delta], 100, strategy.version))
    return strategy.model[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sync_from_one_model_needs_no_lr_change(optimizer):
    options = StrategyOptions(strategy="sync", server_optimizer=optimizer, server_lr=0.1)
    mean_delta = np.mean(one_local_step(W0, 0.2), axis=0)
    reference = build_strategy(options, [W0], K).optimizer.step([W0], [mean_delta])
    np.testing.assert_allclose(run(options, one_local_step(W0, 0.2)), reference[0], **TOL)


def test_with_sgd_one_at_a_time_matches_sync_exactly_with_local_lr_divided_by_k():
    sync = run(StrategyOptions(strategy="sync"), one_local_step(W0, 0.2))
    one_at_a_time = StrategyOptions(buffer_size=1, staleness_weight="constant")
    np.testing.assert_allclose(run(one_at_a_time, one_local_step(W0, 0.2 / K)), sync, **TOL)
    full_lr = run(one_at_a_time, one_local_step(W0, 0.2))
    np.testing.assert_allclose(full_lr - W0, K * (sync - W0), **TOL)


def test_with_adam_local_lr_divided_by_k_does_not_recover_sync():
    adam = {"server_optimizer": "adam", "server_lr": 0.1}
    sync = run(StrategyOptions(strategy="sync", **adam), one_local_step(W0, 0.2))
    one_at_a_time = StrategyOptions(buffer_size=1, staleness_weight="constant", **adam)
    assert not np.allclose(run(one_at_a_time, one_local_step(W0, 0.2 / K)), sync, rtol=0.1)


def test_an_adam_step_is_invariant_to_the_pseudo_gradient_scale_up_to_tau():
    g = [f32([0.3, -2.0, 0.01])]
    full = ServerAdam(lr=0.1, tau=1e-9).step([f32(np.zeros(3))], g)
    scaled = ServerAdam(lr=0.1, tau=1e-9).step([f32(np.zeros(3))], [g[0] / K])
    np.testing.assert_allclose(scaled[0], full[0], rtol=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_flsims_weighted_sum_is_ours_with_server_lr_times_sqrt2_k(momentum):
    """FLSim's FedBuff (7311f2d) steps torch SGD on the weighted SUM of s(τ)/s(1)·Δ (no ÷K,
    staleness weights normalised at τ = 1): with the polynomial a = 0.5 that is our ÷K buffer
    times √2·K, absorbed exactly by our server-lr, with and without momentum."""
    k, flsim_lr = 3, 0.05
    options = StrategyOptions(buffer_size=k, server_lr=flsim_lr * np.sqrt(2) * k, server_momentum=momentum)
    ours = FedBuff([f32(np.ones(4))], options)
    w, velocity = np.ones(4), np.zeros(4)
    for step in range(3):
        deltas, staleness = f32(rng.normal(size=(k, 4))), [0, 1, 3]
        for i, (delta, tau) in enumerate(zip(deltas, staleness, strict=True)):
            ours.receive(ClientUpdate(10 * step + i, [delta], 100, tau))
        total = sum((1 + tau) ** -0.5 / 2**-0.5 * d.astype(np.float64) for d, tau in zip(deltas, staleness))
        velocity = momentum * velocity + total  # torch.optim.SGD: buf ← μ·buf + g; w ← w − lr·buf
        w = w - flsim_lr * velocity
        np.testing.assert_allclose(ours.model[0], w, **TOL)


@pytest.mark.parametrize(("example_weight", "normalization"), [("equal", "count"), ("linear", "weight")])
def test_k_equal_to_the_cohort_is_flowers_own_fedavg_aggregate_train(task_identity, example_weight, normalization):
    """Flower 1.41's FedAvg.aggregate_train on the trained models (weighted by num-examples;
    all 1 for equal weights) is our one FedBuff step from the same model, to float32 rounding."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    initial = [f32(rng.normal(size=(20, 10))), f32(rng.normal(size=10))]
    n = [10, 250, 40, 700]
    trained = [[f32(a + rng.normal(scale=0.1, size=a.shape)) for a in initial] for _ in n]
    weighted = example_weight == "linear"
    replies = [
        Message(
            RecordDict({"arrays": ArrayRecord(t), "metrics": MetricRecord({"num-examples": k if weighted else 1})}),
            dst_node_id=1,
            message_type="train",
        )
        for t, k in zip(trained, n)
    ]
    flower = FedAvg().aggregate_train(1, replies)[0].to_numpy_ndarrays()
    ours = FedBuff(
        initial, StrategyOptions(buffer_size=len(n), example_weight=example_weight, buffer_normalization=normalization)
    )
    for i, (t, k) in enumerate(zip(trained, n)):
        ours.receive(ClientUpdate(i, [a - b for a, b in zip(initial, t)], k, 0))
    assert ours.version == 1
    for a, b in zip(ours.model, flower):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
