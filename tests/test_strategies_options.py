"""StrategyOptions validation and the strategy registry."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import (
    STRATEGIES,
    ClientUpdate,
    FedAsync,
    FedBuff,
    StrategyOptions,
    build_strategy,
)

INITIAL = [np.zeros(3, np.float32)]


def test_defaults_are_valid_and_every_field_is_a_simple_typed_knob():
    options = StrategyOptions()
    for field in dataclasses.fields(options):
        assert type(field.default) in (int, float, str, bool), field.name
    assert (options.strategy, options.buffer_size) == ("fedbuff", 3)
    assert options.buffer_normalization == "count"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"strategy": "x"},
            r"strategy must be one of \('fedbuff', 'fedasync', 'sync', 'fedcompass', 'flower-fedavg'\), got 'x'",
        ),
        ({"buffer_size": 0}, "buffer-size must be >= 1, got 0"),
        ({"buffer_size": "3"}, "buffer-size must be int, got '3'"),
        ({"buffer_normalization": "mean"}, "buffer-normalization must be one of"),
        ({"staleness_weight": "hinge2"}, "staleness-weight must be one of"),
        ({"staleness_exponent": -0.5}, "staleness-exponent must be >= 0, got -0.5"),
        ({"staleness_exponent": float("inf")}, "staleness-exponent must be finite"),
        ({"staleness_hinge_slope": -1.0}, "staleness-hinge-slope must be >= 0"),
        ({"staleness_cutoff": -1}, "staleness-cutoff must be >= 0"),
        ({"example_weight": "cubic"}, "example-weight must be one of"),
        ({"example_reference": 0.0}, "example-reference must be > 0"),
        ({"max_staleness": -1}, "max-staleness must be >= 0"),
        ({"stale_policy": "ignore"}, "stale-policy must be one of"),
        ({"stale_factor": 1.5}, r"stale-factor must be in \[0, 1\]"),
        ({"server_optimizer": "lamb"}, "server-optimizer must be one of"),
        ({"server_lr": 0.0}, "server-lr must be > 0"),
        ({"server_lr": float("nan")}, "server-lr must be > 0, got nan"),
        ({"server_lr": True}, "server-lr must be float, got True"),
        ({"server_momentum": 1.0}, r"server-momentum must be in \[0, 1\)"),
        ({"server_beta1": -0.1}, r"server-beta1 must be in \[0, 1\)"),
        ({"server_beta2": 1.0}, r"server-beta2 must be in \[0, 1\)"),
        ({"server_tau": 0.0}, "server-tau must be > 0"),
        ({"fedasync_alpha": 0.0}, r"fedasync-alpha must be in \(0, 1\]"),
    ],
)
def test_bad_values_fail_naming_the_run_config_key(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        StrategyOptions(**kwargs)


@given(st.integers(max_value=0))
def test_any_buffer_size_below_one_is_refused(k):
    with pytest.raises(ValueError, match=r"^buffer-size must be >= 1"):
        StrategyOptions(buffer_size=k)


@given(st.floats(max_value=0.0) | st.just(float("nan")))
def test_any_non_positive_server_lr_is_refused(lr):
    with pytest.raises(ValueError, match=r"^server-lr must be > 0"):
        StrategyOptions(server_lr=lr)


@given(st.floats(max_value=0.0, exclude_max=True))
def test_any_negative_exponent_is_refused(a):
    with pytest.raises(ValueError, match=r"^staleness-exponent must be >= 0"):
        StrategyOptions(staleness_exponent=a)


@given(
    st.sampled_from(
        ["strategy", "staleness_weight", "example_weight", "server_optimizer", "stale_policy", "buffer_normalization"]
    ),
    st.text(max_size=12),
)
def test_any_unknown_name_is_refused(field, name):
    valid = {
        "fedbuff",
        "fedasync",
        "sync",
        "flower-fedavg",
        "constant",
        "polynomial",
        "hinge",
        "threshold",
        "equal",
        "linear",
        "sqrt",
        "log",
        "sgd",
        "adam",
        "yogi",
        "adagrad",
        "drop",
        "down-weight",
        "count",
        "weight",
    }
    if name in valid:
        return
    with pytest.raises(ValueError, match=f"^{field.replace('_', '-')} must be one of"):
        StrategyOptions(**{field: name})


def test_run_settings_can_inherit_the_options():
    @dataclasses.dataclass(frozen=True)
    class Settings(StrategyOptions):
        concurrency: int = 6

        def __post_init__(self):
            super().__post_init__()

    settings = Settings(buffer_size=5)
    assert isinstance(build_strategy(settings, INITIAL, settings.concurrency), FedBuff)
    with pytest.raises(ValueError, match="buffer-size"):
        Settings(buffer_size=0)


def test_registry_builds_each_named_strategy():
    assert set(STRATEGIES) == {"fedbuff", "fedasync", "sync", "fedcompass"}
    assert isinstance(build_strategy(StrategyOptions(strategy="fedbuff"), INITIAL, 4), FedBuff)
    assert isinstance(build_strategy(StrategyOptions(strategy="fedasync"), INITIAL, 4), FedAsync)
    strategy = build_strategy(StrategyOptions(strategy="sync"), INITIAL, 4)
    assert strategy.options.buffer_size == 4 and strategy.options.staleness_weight == "constant"


def test_the_built_strategy_owns_a_copy_of_the_initial_model():
    initial = [np.ones(2, np.float32)]
    strategy = build_strategy(StrategyOptions(), initial, 2)
    initial[0][:] = 5.0
    np.testing.assert_array_equal(strategy.model[0], [1.0, 1.0])


def test_sync_steps_once_per_round_of_concurrency_updates_without_staleness_weights():
    options = StrategyOptions(strategy="sync", buffer_size=1)
    strategy = build_strategy(options, [np.zeros(1, np.float32)], 3)
    for client in range(3):
        delta = [np.array([3.0 * client], np.float32)]
        receipt = strategy.receive(ClientUpdate(client, delta, 10, staleness=5))
    assert receipt.stepped and receipt.weight == 1.0 and strategy.version == 1
    np.testing.assert_allclose(strategy.model[0], [-3.0])  # mean of 0, 3, 6


def test_flower_fedavg_is_a_valid_option_but_not_an_async_strategy():
    options = StrategyOptions(strategy="flower-fedavg")
    with pytest.raises(ValueError, match="driven by Flower's own FedAvg"):
        build_strategy(options, INITIAL, 2)


def test_the_registry_says_what_each_strategy_can_do():
    """The loop, the settings and the DP checks read these, never a strategy's name."""
    from strategies.registry import REGISTRY, build_secure_strategy, flush_size, spec_of, with_capability

    assert with_capability("barrier") == ("sync",)
    assert with_capability("user_dp") == ("fedbuff", "sync", "fedcompass")
    assert with_capability("build_secure") == ("fedbuff", "fedcompass")
    assert with_capability("scheduled") == ("fedcompass",)
    assert [name for name, spec in REGISTRY.items() if spec.run_by_flower] == ["flower-fedavg"]
    assert [flush_size(name, 3, 6) for name in REGISTRY] == [3, 1, 6, 6, 6]
    with pytest.raises(ValueError, match="unknown strategy 'fedbuf'"):
        spec_of("fedbuf")
    with pytest.raises(ValueError, match=r"'fedasync' has no secure-aggregation variant \(those that do: \('fedbuff',"):
        build_secure_strategy(StrategyOptions(strategy="fedasync"), INITIAL, None, None)  # type: ignore[arg-type]
