"""User-level accountant (server_app/privacy.py) against Opacus' RDP accountant driven directly."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from server_app.privacy import UserLevelAccountant
from strategies.dp import flush_noise_multiplier


@settings(max_examples=25, deadline=None)
@given(
    sigma=st.floats(0.5, 5.0),
    rate=st.sampled_from([1.0, 0.5, 0.05]),
    steps=st.integers(1, 300),
    delta=st.sampled_from([1e-5, 1e-3]),
)
def test_epsilon_equals_opacus_rdp_accountant_driven_directly(sigma, rate, steps, delta):
    ours, theirs = UserLevelAccountant(sigma, delta, sample_rate=rate), RDPAccountant()
    for _ in range(steps):
        ours.step()
        theirs.step(noise_multiplier=sigma, sample_rate=rate)
    assert ours.steps == steps
    assert ours.epsilon() == theirs.get_epsilon(delta=delta)
    assert ours.history == theirs.history


def test_per_flush_noise_multipliers_compose_like_opacus():
    ours, theirs = UserLevelAccountant(1.0, 1e-5), RDPAccountant()
    for sigma in [1.0, 1.0, 0.8, 1.0, math.inf, 0.9, 0.9]:
        ours.step(sigma)
        if math.isfinite(sigma):  # a flush with no weight costs nothing
            theirs.step(noise_multiplier=sigma, sample_rate=1.0)
    assert ours.steps == 6
    assert ours.epsilon() == theirs.get_epsilon(delta=1e-5)


def test_epsilon_is_zero_at_start_and_increases_with_every_flush():
    accountant = UserLevelAccountant(1.5, 1e-5)
    assert accountant.epsilon() == 0.0
    previous = 0.0
    for _ in range(50):
        accountant.step()
        now = accountant.epsilon()
        assert now > previous
        previous = now
    # more noise, less ε; smaller δ, more ε
    noisier = UserLevelAccountant(3.0, 1e-5)
    noisier.step(num_steps=50)
    assert noisier.epsilon() < accountant.epsilon()
    assert accountant.epsilon(delta=1e-8) > accountant.epsilon()


def test_no_amplification_by_default_and_amplification_only_when_asked():
    full, sampled = UserLevelAccountant(1.0, 1e-5), UserLevelAccountant(1.0, 1e-5, sample_rate=0.1)
    full.step(num_steps=20)
    sampled.step(num_steps=20)
    assert full.sample_rate == 1.0
    assert sampled.epsilon() < full.epsilon()


@pytest.mark.parametrize(("sigma", "budget"), [(1.0, 8.0), (2.0, 3.0), (0.7, 20.0), (5.0, 1.0)])
def test_budget_stop_happens_at_the_right_flush(sigma, budget):
    accountant = UserLevelAccountant(sigma, 1e-5)
    planned = accountant.steps_until(budget)
    assert planned is not None and planned > 0
    flushes = 0
    while not accountant.budget_exhausted(budget):  # what the server loop does after each flush
        accountant.step()
        flushes += 1
        assert accountant.epsilon() <= budget
        assert accountant.steps_until(budget) == planned - flushes
    assert flushes == planned
    assert accountant.epsilon() <= budget < accountant.epsilon_after(1)
    assert accountant.steps_until(budget) == 0


def test_budget_edge_cases():
    accountant = UserLevelAccountant(1.0, 1e-5)
    assert accountant.steps_until(0.0) is None and not accountant.budget_exhausted(0.0)  # 0: no stop
    first = accountant.epsilon_after(1)
    assert accountant.steps_until(first * 0.99) == 0 and accountant.budget_exhausted(first * 0.99)
    assert accountant.steps_until(first) == 1
    # a flush whose realised noise is thinner than σ (distributed shares, stale weights)
    thin = flush_noise_multiplier("distributed", 1.0, [1.0, 0.2, 0.2], k_min=3)
    assert thin < 1.0
    assert accountant.budget_exhausted(first, noise_multiplier=thin)
    assert not accountant.budget_exhausted(first)


def test_state_dict_round_trip_through_json_and_a_flower_config_record():
    from flwr.app import ConfigRecord

    accountant = UserLevelAccountant(1.1, 1e-5)
    for sigma in [None, None, 0.9, None]:
        accountant.step(sigma)
    state = json.loads(json.dumps(accountant.state_dict()))
    record = ConfigRecord(state)  # only floats, ints and lists of them: fits context.state
    restored = UserLevelAccountant.from_state_dict(dict(record))
    assert restored.epsilon() == accountant.epsilon()
    assert restored.history == accountant.history
    restored.step()
    accountant.step()
    assert restored.epsilon() == accountant.epsilon()
    with pytest.raises(ValueError, match="noise-multiplier"):
        UserLevelAccountant(2.0, 1e-5).load_state_dict(state)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="user-dp-noise-multiplier"):
        UserLevelAccountant(0.0, 1e-5)
    with pytest.raises(ValueError, match="user-dp-delta"):
        UserLevelAccountant(1.0, 0.0)
    with pytest.raises(ValueError, match="sample rate"):
        UserLevelAccountant(1.0, 1e-5, sample_rate=0.0)
    with pytest.raises(ValueError):
        UserLevelAccountant(1.0, 1e-5).step(0.0)
