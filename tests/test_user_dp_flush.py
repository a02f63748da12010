"""User-level DP: the σ the accountant charges is the σ the clients and the server really add.

For every strategy × DP mode × ``user-dp-k-min`` setting (and a few concurrency / buffer-size
pairs), one flush is played through the real pieces: each client's delta is what the
ClientApp sends (clipped, plus its noise share of ``RunSettings.share_std()``), the strategy
is the one the ServerApp builds, with the ServerApp's :class:`strategies.dp.FlushPrivacy`
(K_min = ``RunSettings.dp_k_min``). The deltas are zero, so the step the model takes is the
flush's noise alone: its empirical std over the model's coordinates, divided by the
sensitivity ``max w_i · C``, is the noise multiplier really added. The accountant must be
charged exactly that (capped at the configured σ: a flush is never credited with more
privacy than configured), and with ``user-dp-k-min = 0`` a full fresh flush must carry
exactly σ: no less (ε under-stated), no more (utility wasted).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbuff.settings import RunSettings, SettingsError
from strategies import ClientUpdate, build_strategy
from strategies.dp import FlushPrivacy, add_noise_share, clip_by_l2
from strategies.registry import FLOWER_FEDAVG

SIGMA, CLIP = 1.0, 0.5
COORDINATES = 40_000  # std of the measured noise known to ~0.4 %
SIZES = [(2, 3), (6, 3), (3, 3), (4, 2)]  # (concurrency, buffer-size)
K_MIN_SETTINGS = [0, 1, 2, 3]
MODES = ("central", "distributed")


def settings_for(strategy: str, mode: str, k_min: int, concurrency: int, buffer_size: int) -> RunSettings:
    return RunSettings(
        strategy=strategy,
        concurrency=concurrency,
        buffer_size=buffer_size,
        user_dp=True,
        user_dp_mode=mode,
        user_dp_k_min=k_min,
        user_dp_noise_multiplier=SIGMA,
        user_dp_clip=CLIP,
        server_optimizer="sgd",
        server_lr=1.0,
    )


def client_delta(settings: RunSettings, rng: np.random.Generator) -> list[np.ndarray]:
    """What the ClientApp sends for a zero delta under user-level DP (client_app/app.py `_privatize`)."""
    clipped, _ = clip_by_l2([np.zeros(COORDINATES, dtype=np.float32)], settings.user_dp_clip)
    std = settings.share_std()
    return add_noise_share(clipped, std, rng) if std > 0 else clipped


def play_flush(settings: RunSettings, updates: int, stale: bool, seed: int) -> tuple[list[float], float]:
    """Send ``updates`` updates (client i at staleness i if ``stale``), flushing early if the
    strategy has not stepped by then (the barrier's short round); return (σ charged, σ added)."""
    charged: list[float] = []
    privacy = FlushPrivacy(
        settings, settings.dp_k_min, lambda sigma: charged.append(sigma) or True, rng=np.random.default_rng(seed)
    )
    strategy = build_strategy(settings, [np.zeros(COORDINATES, dtype=np.float32)], settings.concurrency, privacy)
    rng = np.random.default_rng(seed + 1)
    weights, stepped = [], False
    for client in range(updates):
        receipt = strategy.receive(ClientUpdate(client, client_delta(settings, rng), 10, client if stale else 0))
        weights.append(receipt.weight)
        stepped = receipt.stepped
    if not stepped:
        assert strategy.flush()
    # SGD with lr 1 on a zero signal: model = -(noise in the weighted sum) / count
    noise_in_sum = -np.asarray(strategy.model[0], dtype=np.float64) * len(weights)
    return charged, float(noise_in_sum.std()) / (max(weights) * settings.user_dp_clip)


def updates_per_flush(strategy: str, concurrency: int, buffer_size: int) -> int:
    """How many fresh updates really make this strategy step (counted, not looked up)."""
    built = build_strategy(
        settings_for(strategy, "central", 0, concurrency, buffer_size), [np.zeros(1, dtype=np.float32)], concurrency
    )
    for client in range(100):
        if built.receive(ClientUpdate(client, [np.zeros(1, dtype=np.float32)], 10, 0)).stepped:
            return client + 1
    raise AssertionError("never stepped")


@pytest.mark.parametrize("strategy", ["fedbuff", "sync"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k_min", K_MIN_SETTINGS)
@pytest.mark.parametrize(("concurrency", "buffer_size"), SIZES)
def test_the_accountant_charges_the_noise_really_added(strategy, mode, k_min, concurrency, buffer_size):
    flush = updates_per_flush(strategy, concurrency, buffer_size)
    if k_min > flush:  # K_min shares could never meet in one flush
        with pytest.raises(SettingsError, match=r"^user-dp-k-min must be <= the"):
            settings_for(strategy, mode, k_min, concurrency, buffer_size)
        return
    settings = settings_for(strategy, mode, k_min, concurrency, buffer_size)
    assert settings.flush_size == flush
    seed = 1000 * concurrency + 100 * buffer_size + 10 * k_min + MODES.index(mode)
    for updates, stale in [(flush, False), (flush, True), (max(1, flush - 1), False)]:
        charged, added = play_flush(settings, updates, stale, seed)
        assert len(charged) == 1
        assert charged[0] == pytest.approx(min(SIGMA, added), rel=0.03), (updates, stale)
    if k_min == 0:
        _, added = play_flush(settings, flush, False, seed)
        assert added == pytest.approx(SIGMA, rel=0.03)  # exactly the configured noise, no more


@pytest.mark.parametrize("strategy", ["fedasync", FLOWER_FEDAVG])
def test_strategies_without_a_noised_flush_refuse_user_dp(strategy):
    with pytest.raises(SettingsError, match=r"^strategy must be 'fedbuff' or 'sync' or 'fedcompass' with user-dp"):
        settings_for(strategy, "distributed", 0, 3, 3)


@pytest.mark.parametrize(
    ("strategy", "concurrency", "buffer_size", "flush"),
    [
        ("fedbuff", 6, 3, 3),
        ("sync", 6, 3, 6),
        ("sync", 2, 3, 2),
        ("fedasync", 4, 3, 1),
        (FLOWER_FEDAVG, 4, 3, 4),
    ],
)
def test_k_min_resolves_to_the_flush_size_once(strategy, concurrency, buffer_size, flush):
    settings = RunSettings(strategy=strategy, concurrency=concurrency, buffer_size=buffer_size)
    assert settings.flush_size == settings.dp_k_min == flush
    assert (
        RunSettings(strategy=strategy, concurrency=concurrency, buffer_size=buffer_size, user_dp_k_min=1).dp_k_min == 1
    )
    distributed = settings_for("sync", "distributed", 0, 2, 3)
    assert distributed.share_std() == pytest.approx(SIGMA * CLIP / math.sqrt(2))
    assert settings_for("sync", "central", 0, 2, 3).share_std() == 0.0
