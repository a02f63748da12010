"""Sample-level DP-SGD on a client (client_app/dp_sgd.py, Opacus)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from client_app.dp_sgd import (
    IncompatibleModelError,
    epsilon_of,
    history_from_record,
    history_to_record,
    train_dp_sgd,
)
from fedbuff import partitioners
from fedbuff.data import load_digits_split
from fedbuff.model import build_model, evaluate, get_weights, set_weights
from fedbuff.settings import DPSGDOptions, SettingsError
from fedbuff.task import Examples
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def partition():
    train, _ = load_digits_split(seed=42, test_fraction=0.2)
    rows = partitioners.partition("dirichlet", train.labels, 4, 1, seed=42, alpha=1.0)
    assert 150 < len(rows) < 700
    return train.features[rows], train.labels[rows]


def run(model, features, labels, options, *, history=None, seed=0, epochs=1, steps=0):
    return train_dp_sgd(
        model,
        Examples(features, labels),
        options=options,
        epochs=epochs,
        steps=steps,
        batch_size=32,
        lr=0.5,
        history=history,
        sampling_seed=seed,
        noise_seed=seed + 1000,
    )


def test_dp_sgd_learns_and_epsilon_grows_across_messages(partition):
    """Two "messages", each a fresh PrivacyEngine, with the history carried between them."""
    features, labels = partition
    options = DPSGDOptions(dp_sgd=True, dp_noise_multiplier=0.8, dp_max_grad_norm=1.0, dp_delta=1e-5)
    model = build_model(hidden_units=64, seed=42)
    loss_before, _ = evaluate(model, features, labels)

    first = run(model, features, labels, options, seed=1, epochs=3)
    loss_first, _ = evaluate(model, features, labels)
    record = dict(first.history)  # what the ClientApp keeps in context.state between messages

    fresh = build_model(hidden_units=64, seed=42)
    set_weights(fresh, get_weights(model))  # the next message starts a new process and model
    second = run(fresh, features, labels, options, history=record, seed=2, epochs=3)
    loss_second, _ = evaluate(fresh, features, labels)

    assert loss_second < loss_first < loss_before - 0.3
    assert np.isfinite(first.loss) and np.isfinite(second.loss)
    per_epoch = -(-len(labels) // 32)
    assert first.steps == second.steps == 3 * per_epoch
    assert first.sample_rate == pytest.approx(1 / per_epoch)
    assert 0 < first.epsilon < second.epsilon < np.inf
    # the restored history composes: ε after message 2 is that of all steps together …
    assert history_from_record(second.history) == [(0.8, first.sample_rate, 2 * first.steps)]
    assert second.epsilon == pytest.approx(epsilon_of(second.history, 1e-5))
    # … and without the history a client would under-report (each message alone costs the same)
    alone = run(build_model(hidden_units=64, seed=42), features, labels, options, seed=3, epochs=3)
    assert alone.epsilon == pytest.approx(first.epsilon) and alone.epsilon < second.epsilon


def test_steps_cap_and_target_epsilon(partition):
    features, labels = partition
    options = DPSGDOptions(dp_sgd=True, dp_target_epsilon=2.0, dp_max_grad_norm=1.0, dp_delta=1e-5)
    result = run(build_model(hidden_units=16, seed=0), features, labels, options, steps=7, epochs=5)
    assert result.steps == 7
    assert 1.9 <= result.epsilon <= 2.0  # Opacus calibrates σ to the steps this message takes
    assert result.noise_multiplier > 0
    again = run(build_model(hidden_units=16, seed=0), features, labels, options, steps=7, history=result.history)
    assert again.epsilon > result.epsilon  # the target is per message; the total keeps growing


def test_same_seeds_same_model_and_os_seeded_by_default(partition):
    features, labels = partition
    options = DPSGDOptions(dp_sgd=True)
    a, b, c = (build_model(hidden_units=8, seed=0) for _ in range(3))
    run(a, features, labels, options, seed=5, steps=3)
    run(b, features, labels, options, seed=5, steps=3)
    train_dp_sgd(c, Examples(features, labels), options=options, epochs=1, steps=3, batch_size=32, lr=0.5)
    for x, y, z in zip(get_weights(a), get_weights(b), get_weights(c)):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)  # unseeded noise is not the fixed default torch seed


def test_batchnorm_gives_a_clear_error(partition):
    features, labels = partition
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(IncompatibleModelError) as caught:
        run(model, features, labels, DPSGDOptions(dp_sgd=True), steps=1)
    message = str(caught.value)
    assert "layer '1' (BatchNorm1d)" in message
    assert "ModuleValidator.fix" in message and "GroupNorm" in message
    assert isinstance(caught.value, ValueError)


def test_history_record_round_trip_fits_a_flower_config_record():
    from flwr.app import ConfigRecord

    history = [(1.0, 0.1, 20), (0.7, 0.05, 3)]
    record = ConfigRecord(history_to_record(history))
    assert history_from_record(dict(record)) == history
    assert history_from_record(None) == []
    assert epsilon_of(None, 1e-5) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        history_from_record({"noise-multiplier": [1.0], "sample-rate": [], "steps": [1]})


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"dp-sgd": True, "dp-noise-multiplier": 0.0}, "dp-noise-multiplier"),
        ({"dp-max-grad-norm": 0}, "dp-max-grad-norm"),
        ({"dp-target-epsilon": -1}, "dp-target-epsilon"),
        ({"dp-delta": 1.5}, "dp-delta"),
        ({"dp-sgd": "on"}, "dp-sgd"),
    ],
)
def test_options_errors_name_the_key(values, key):
    with pytest.raises(SettingsError, match=f"^{key} must be"):
        DPSGDOptions(**{k.replace("-", "_"): v for k, v in values.items()})


def test_importing_the_module_does_not_import_opacus_or_torch():
    code = "import sys, client_app.dp_sgd; bad = {'opacus', 'torch'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_model_is_left_clean_for_get_weights(partition):
    features, labels = partition
    model = build_model(hidden_units=8, seed=0)
    keys = list(model.state_dict())
    run(model, features, labels, DPSGDOptions(dp_sgd=True), steps=2)
    assert list(model.state_dict()) == keys
    assert all(not hasattr(p, "grad_sample") and p.grad is None for p in model.parameters())
    assert isinstance(model, nn.Sequential) and torch.is_grad_enabled()
