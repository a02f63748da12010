"""Device model (fedbuff.device_model): seeded durations, tier ratios, availability, link."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbuff.device_model import Availability, DeviceModel, DeviceModelError, Jitter

RATIOS = {"high": 1.0, "mid": 3.3, "low": 9.2}
N = 200_000  # samples per moment check


@pytest.mark.parametrize(
    "spec",
    [
        "lognormal:normalize=0",
        "lognormal:mu=0.5,sigma=0.3,normalize=0",
        "lognormal",
        "halfnormal:normalize=0",
        "halfnormal:min=0,sd=2,normalize=0",
        "halfnormal",
        "exponential:normalize=0",
        "exponential:mean=3,normalize=0",
        "exponential",
    ],
)
def test_sampled_moments_match(spec):
    """Seeded sample of 200k; mean within 1% and variance within 5% of the closed form
    (the standard errors are ~0.2% and ~1-2% for these distributions)."""
    jitter = Jitter.parse(spec)
    x = jitter.sample(np.random.default_rng(1234), N)
    assert x.mean() == pytest.approx(jitter.mean(), rel=0.01)
    assert x.var() == pytest.approx(jitter.variance(), rel=0.05)
    assert (x >= 0).all()
    if "normalize=0" not in spec:
        assert jitter.mean() == pytest.approx(1.0)


def test_fedscale_lognormal_raw_mean():
    assert Jitter.parse("lognormal:normalize=0").mean() == pytest.approx(math.exp(1.18))


def test_bad_jitter_specs():
    for spec in ("gamma", "lognormal:sigma=-1", "exponential:mean=0", "lognormal:mean=2", "halfnormal:sd=x"):
        with pytest.raises(DeviceModelError):
            Jitter.parse(spec)


def _model(**knobs) -> DeviceModel:
    return DeviceModel.from_knobs(tier_speed_ratios=RATIOS, emulated_step_seconds=0.05, **knobs)


def test_durations_are_deterministic_per_node_and_task():
    model = _model(task_jitter="lognormal", seed=7)
    a = [model.for_node(2, "mid").compute_seconds(t, 0.01, 20) for t in range(5)]
    b = [model.for_node(2, "mid").compute_seconds(t, 0.01, 20) for t in reversed(range(5))]
    assert a == b[::-1]  # order of calls does not matter
    assert len(set(a)) == 5
    assert model.for_node(3, "mid").compute_seconds(0, 0.01, 20) != a[0]
    assert _model(task_jitter="lognormal", seed=8).for_node(2, "mid").compute_seconds(0, 0.01, 20) != a[0]


@pytest.mark.parametrize("jitter", ["none", "lognormal", "halfnormal", "exponential"])
def test_tier_ratios_hold_in_the_mean(jitter):
    """Mean emulated seconds over 20k tasks per tier keep low : mid : high within 3%."""
    model = _model(task_jitter=jitter, seed=1)
    means = {
        tier: np.mean([model.for_node(i % 50, tier).compute_seconds(i, 0.0, 10) for i in range(20_000)])
        for tier in RATIOS
    }
    for tier, ratio in RATIOS.items():
        assert means[tier] / means["high"] == pytest.approx(ratio, rel=0.03)
    assert means["high"] == pytest.approx(10 * 0.05, rel=0.03)  # normalised: mean factor 1


def test_no_jitter_matches_node_profile_rule():
    clock = _model().for_node(0, "low")
    assert clock.compute_seconds(0, 2.0, 10) == pytest.approx(9.2 * 2.0)
    assert clock.compute_seconds(0, 0.1, 10) == pytest.approx(9.2 * 0.5)
    assert _model(task_jitter="lognormal").for_node(0, "real").compute_seconds(0, 1.5, 10) == 1.5


def test_link_seconds():
    model = _model(link_mbps="high=50,mid=20,low=5", link_latency_seconds=0.1)
    assert model.for_node(0, "low").transfer_seconds(1_000_000) == pytest.approx(0.1 + 1.6)
    assert model.for_node(0, "high").transfer_seconds(1_000_000) == pytest.approx(0.1 + 0.16)
    assert _model().for_node(0, "low").transfer_seconds(10**9) == 0.0
    low = model.for_node(0, "low")
    assert low.task_seconds(0, 1.0, 1, 1_000_000) == pytest.approx(9.2 + 2 * 1.7)
    with pytest.raises(DeviceModelError):
        _model(link_mbps="high=50,mid=20")


def test_availability_schedule():
    a = Availability.parse("onoff:online=600,offline=200", seed=3, node=1)
    windows = a.windows(50_000)
    assert windows == Availability.parse("onoff:online=600,offline=200", 3, 1).windows(50_000)
    assert windows[: len(a.windows(10_000))] == a.windows(10_000)  # horizon-consistent
    assert windows != Availability.parse("onoff:online=600,offline=200", 3, 2).windows(50_000)
    online = sum(min(b, 50_000) - a_ for a_, b in windows)
    assert online / 50_000 == pytest.approx(a.online_fraction(), abs=0.08)
    # a task spanning an offline gap waits it out
    (s0, e0), (s1, _) = windows[0], windows[1]
    assert a.is_online(s0) and not a.is_online((e0 + s1) / 2)
    assert a.interrupted(e0 - 1, 10)
    assert a.finish_time(e0 - 1, 10) == pytest.approx(s1 + 9)
    assert not a.interrupted(s1, 1) and a.finish_time(s1, 1) == pytest.approx(s1 + 1)


def test_always_available():
    a = Availability.parse("always", 0, 0)
    assert a.is_online(1e9) and a.finish_time(5, 3) == 8 and not a.interrupted(0, 1e9)
    with pytest.raises(DeviceModelError):
        Availability.parse("onoff:online=10", 0, 0)


def test_a_clientapp_draws_each_task_from_the_device_model_across_processes():
    """client_app.task.emulated_seconds: the task number lives in context.state, so the n-th
    task of a node gets the n-th draw whatever process runs it; a real device is not slowed."""
    from flwr.app import Context, RecordDict

    from client_app.node import NodeProfile
    from client_app.task import emulated_seconds
    from fedbuff.settings import RunSettings

    settings = RunSettings(task_jitter="lognormal", link_mbps="high=50,mid=20,low=5")
    node = NodeProfile(partition_id=2, num_partitions=4, device_tier="mid")
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    got = [emulated_seconds(context, settings, node, 0.01, 20, 1_000_000) for _ in range(3)]
    clock = settings.device_model().for_node(2, "mid")
    assert got == pytest.approx([clock.task_seconds(t, 0.01, 20, 1_000_000) for t in range(3)], rel=1e-6)
    real = NodeProfile(partition_id=0, num_partitions=4)
    assert emulated_seconds(context, settings, real, 0.3, 20, 1_000_000) == 0.3
