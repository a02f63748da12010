"""Server optimizers against the published update rules, by hand; state round-trips.

Reddi et al. (2021) Algorithm 2, with Δ = mean(x_i − x) = −g (our pseudo-gradient g is the
mean of ``dispatched − trained``):
    m ← β1·m + (1 − β1)·Δ;  v ← {Adam: β2·v + (1 − β2)·Δ²;  Yogi: v − (1 − β2)·Δ²·sign(v − Δ²);
    Adagrad: v + Δ²};  x ← x + η·m / (√v + τ);  m₋₁ = 0, v₋₁ = τ².
Below η = 1, β1 = β2 = 0.5, τ = 1 (so v₋₁ = 1), x₀ = [0, 0]; m and v are worked out by hand.
"""

import math

import numpy as np
import pytest

from strategies import ServerAdagrad, ServerAdam, ServerSGD, ServerYogi

HYPER = {"lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 1.0}


def vec(*values):
    return [np.array(values, dtype=np.float32)]


def run(optimizer, *pseudo_gradients):
    x = vec(0.0, 0.0)
    trajectory = []
    for g in pseudo_gradients:
        x = optimizer.step(x, vec(*g))
        trajectory.append(x[0])
    return trajectory


def test_server_sgd_with_momentum_matches_hand_computation():
    opt = ServerSGD(lr=0.5, momentum=0.9)
    w = opt.step(vec(1.0), vec(2.0))  # v = 2, w = 1 - 0.5*2 = 0
    np.testing.assert_allclose(w[0], [0.0])
    w = opt.step(w, vec(1.0))  # v = 0.9*2 + 1 = 2.8, w = 0 - 1.4
    np.testing.assert_allclose(w[0], [-1.4], rtol=1e-6)


def test_fedadam_matches_reddi_algorithm_2():
    x1, x2 = run(ServerAdam(**HYPER), (1.0, 7.0), (7.0, -5.0))
    # g1 = [1, 7]: Δ1 = [-1, -7]; m1 = [-0.5, -3.5]; v1 = 0.5*1 + 0.5*[1, 49] = [1, 25]
    # x1 = m1 / ([1, 5] + 1) = [-0.25, -7/12]
    np.testing.assert_allclose(x1, [-0.25, -7 / 12], rtol=1e-6)
    # g2 = [7, -5]: Δ2 = [-7, 5]; m2 = 0.5*m1 + 0.5*Δ2 = [-3.75, 0.75]
    # v2 = 0.5*[1, 25] + 0.5*[49, 25] = [25, 25]; x2 = x1 + m2 / 6 = [-0.875, -11/24]
    np.testing.assert_allclose(x2, [-0.875, -11 / 24], rtol=1e-6)


def test_fedyogi_matches_reddi_algorithm_2():
    x1, x2 = run(ServerYogi(**HYPER), (1.0, 4.0), (2.0, 2.0))
    # g1 = [1, 4]: Δ1² = [1, 16]; v1 = 1 - 0.5*Δ1²*sign(1 - Δ1²) = [1 - 0, 1 + 8] = [1, 9]
    # m1 = [-0.5, -2]; x1 = m1 / ([1, 3] + 1) = [-0.25, -0.5]
    np.testing.assert_allclose(x1, [-0.25, -0.5], rtol=1e-6)
    # g2 = [2, 2]: Δ2² = [4, 4]; sign(v1 - Δ2²) = [-1, +1] -> v2 = [1 + 2, 9 - 2] = [3, 7]
    # (Adam would give [2.5, 6.5]); m2 = 0.5*m1 + 0.5*[-2, -2] = [-1.25, -2]
    expected = [-0.25 - 1.25 / (math.sqrt(3) + 1), -0.5 - 2 / (math.sqrt(7) + 1)]
    np.testing.assert_allclose(x2, expected, rtol=1e-6)


def test_fedadagrad_matches_reddi_algorithm_2():
    x1, x2 = run(ServerAdagrad(**HYPER), (1.0, 2.0), (1.0, -2.0))
    # g1 = [1, 2]: v1 = 1 + [1, 4] = [2, 5]; m1 = [-0.5, -1]
    first = [-0.5 / (math.sqrt(2) + 1), -1 / (math.sqrt(5) + 1)]
    np.testing.assert_allclose(x1, first, rtol=1e-6)
    # g2 = [1, -2]: Δ2 = [-1, 2]; v2 = [3, 9]; m2 = 0.5*m1 + 0.5*Δ2 = [-0.75, 0.5]
    np.testing.assert_allclose(x2, [first[0] - 0.75 / (math.sqrt(3) + 1), first[1] + 0.5 / 4], rtol=1e-6)


@pytest.mark.parametrize("kind", [ServerSGD, ServerAdam, ServerYogi, ServerAdagrad])
def test_every_optimizer_moves_the_model_the_way_the_clients_moved_it(kind):
    # clients trained w = 1 down to 0.8: delta = dispatched - trained = +0.2
    new = kind(lr=0.1)
    assert new.step(vec(1.0), vec(0.2))[0][0] < 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: ServerSGD(lr=0.5, momentum=0.9),
        lambda: ServerSGD(lr=0.5),
        lambda: ServerAdam(lr=0.1),
        lambda: ServerYogi(lr=0.1),
        lambda: ServerAdagrad(lr=0.1),
    ],
)
def test_state_dict_round_trips_and_resumes_identically(make):
    model = [np.array([1.0, -2.0], np.float32), np.array([[0.5]], np.float32)]
    grads = [[np.array([0.3, -0.1]), np.array([[0.2]])], [np.array([-0.4, 0.2]), np.array([[0.1]])]]
    original = make()
    for g in grads:
        model = original.step(model, g)
    state = original.state_dict()
    assert state["steps"] == 2
    assert all(isinstance(v, int | float | np.ndarray) for v in state.values())
    restored = make()
    restored.load_state_dict(state)
    np.testing.assert_equal(restored.state_dict(), state)
    for arr in state.values():  # a copy: changing it does not touch the optimizer
        if isinstance(arr, np.ndarray):
            arr += 100.0
    np.testing.assert_equal(restored.state_dict(), original.state_dict())
    for a, b in zip(original.step(model, grads[0]), restored.step(model, grads[0]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert restored.steps == 3


def test_load_state_dict_refuses_a_state_of_another_kind():
    adam = ServerAdam()
    adam.step(vec(0.0), vec(1.0))
    with pytest.raises(ValueError, match=r"unexpected optimizer state key 'm\.0'"):
        ServerSGD(momentum=0.9).load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="no 'steps'"):
        ServerAdam().load_state_dict({})
    with pytest.raises(ValueError, match="needs moments"):
        ServerAdam().load_state_dict({"steps": 1, "m.0": np.zeros(1)})


@pytest.mark.parametrize(
    "make",
    [
        lambda: ServerSGD(lr=0.5),
        lambda: ServerSGD(lr=0.5, momentum=0.9),
        lambda: ServerAdam(**HYPER),
        lambda: ServerYogi(**HYPER),
    ],
)
def test_a_step_leaves_the_callers_model_and_pseudo_gradient_alone(make):
    model, gradient = [np.array([1.0, 2.0], np.float32)], [np.array([0.25, -4.0], np.float64)]
    optimizer = make()
    for _ in range(2):
        optimizer.step(model, gradient)
    np.testing.assert_array_equal(model[0], [1.0, 2.0])
    np.testing.assert_array_equal(gradient[0], [0.25, -4.0])


def test_plain_sgd_is_the_float64_step_rounded_once_to_float32():
    rng = np.random.default_rng(0)
    model, gradient = rng.normal(0, 1, 1001).astype(np.float32), rng.normal(0, 1e-3, 1001)
    (stepped,) = ServerSGD(lr=0.3).step([model], [gradient])
    np.testing.assert_array_equal(stepped, (model.astype(np.float64) - 0.3 * gradient).astype(np.float32))
