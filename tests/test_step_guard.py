"""The step guard: a server step that is non-finite or longer than max-step-norm never lands.

Also where its default comes from: the step norms of an honest run of the default task.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedbuff.settings import RunSettings
from server_app.events import Fanout
from server_app.loop import AsyncLoop
from server_app.metrics import MetricsExporter
from server_app.records import RunRecorder
from strategies import ClientUpdate, FedAsync, FedBuff, StrategyOptions, build_strategy
from strategies.guard import NON_FINITE, STEP_NORM, check_step
from tests.fakes import FakeGrid, distance_accuracy, half_step, train_reply
from tests.honest import HonestClients

pytestmark = pytest.mark.usefixtures("task_identity")


def arrays(*values):
    return [np.array(values, dtype=np.float32)]


def update(client, *delta):
    return ClientUpdate(client, arrays(*delta), 100, 0)


def test_check_step_measures_the_l2_norm_and_names_what_is_wrong():
    old = arrays(0.0, 0.0)
    assert check_step(old, arrays(3.0, 4.0), 5.0).refused is None
    assert check_step(old, arrays(3.0, 4.0), 4.9).refused == STEP_NORM
    assert check_step(old, arrays(3.0, 4.0), 0.0).norm == 5.0  # 0: no norm bound
    assert check_step(old, arrays(np.nan, 0.0), 0.0).refused == NON_FINITE
    assert check_step(old, arrays(np.inf, 0.0), 1e9).refused == NON_FINITE


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_refused_step_leaves_model_version_and_optimizer_state_as_they_were(momentum):
    strategy = FedBuff(arrays(0.0, 0.0), StrategyOptions(buffer_size=2, max_step_norm=1.0, server_momentum=momentum))
    strategy.receive(update(1, 0.1, 0.1))
    assert strategy.receive(update(2, 0.1, 0.1)).stepped
    model, state = [a.copy() for a in strategy.model], strategy.optimizer.state_dict()
    strategy.receive(update(1, 0.1, 0.1))
    receipt = strategy.receive(update(2, 50.0, 0.0))  # mean 25: 25 × the bound
    assert not receipt.stepped and receipt.step.refused == STEP_NORM and receipt.step.norm > 1.0
    assert strategy.version == 1 and strategy.buffer_fill == 0  # the buffer is gone
    np.testing.assert_array_equal(strategy.model[0], model[0])
    after = strategy.optimizer.state_dict()
    assert after.keys() == state.keys() and all(np.array_equal(after[k], state[k]) for k in state)
    strategy.receive(update(1, 0.1, 0.1))
    assert strategy.receive(update(2, 0.1, 0.1)).stepped and strategy.version == 2  # and training goes on


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_step_that_overflows_float32_is_refused_as_non_finite_even_with_the_bound_off():
    strategy = FedBuff(arrays(0.0), StrategyOptions(buffer_size=1, max_step_norm=0.0, server_lr=1e30))
    receipt = strategy.receive(update(1, 1e10))  # 1e40 does not fit a float32
    assert receipt.step.refused == NON_FINITE and receipt.step.norm is None
    assert strategy.version == 0 and np.isfinite(strategy.model[0]).all()


def test_fedasync_guards_every_step_and_keeps_its_history_clean():
    strategy = FedAsync(arrays(0.0), StrategyOptions(strategy="fedasync", fedasync_alpha=1.0, max_step_norm=1.0))
    assert strategy.receive(update(1, -0.5)).stepped
    receipt = strategy.receive(update(2, -100.0))
    assert receipt.step.refused == STEP_NORM and strategy.version == 1
    np.testing.assert_allclose(strategy.model[0], [0.5])
    assert len(strategy._history) == 2  # the refused model never became a dispatch version


def test_the_sync_barrier_counts_a_refused_round(tmp_path):
    def respond(msg):
        factor = 500.0 if msg.metadata.dst_node_id == 3 else 1.0
        return train_reply(msg, lambda a: [d * factor for d in half_step(a)])

    settings = RunSettings(
        strategy="sync", concurrency=3, max_server_steps=2, eval_every=1, max_step_norm=50.0, max_wall_seconds=2.0
    )
    strategy = build_strategy(settings, [np.zeros(4, np.float32)], settings.concurrency)
    loop = AsyncLoop(FakeGrid([1, 2, 3], respond), strategy, settings, distance_accuracy, RunRecorder(tmp_path))
    loop.run()
    assert loop.stats.refused_steps[STEP_NORM] >= 1 and strategy.version == 0


def test_the_loop_drops_a_guarded_buffer_says_so_and_trains_on(tmp_path):
    def respond(msg):  # node 3 sends 900 (within max-update-norm 1000) in one coordinate
        if msg.metadata.dst_node_id == 3:
            return train_reply(msg, lambda a: [np.full_like(d, 450.0) for d in a])
        return train_reply(msg, half_step)

    settings = RunSettings(concurrency=4, buffer_size=2, max_server_steps=4, eval_every=1)
    strategy = build_strategy(settings, [np.zeros(4, np.float32)], settings.concurrency)
    exporter = MetricsExporter()
    loop = AsyncLoop(
        FakeGrid([1, 2, 3, 4], respond),
        strategy,
        settings,
        distance_accuracy,
        Fanout([RunRecorder(tmp_path), exporter]),
    )
    loop.run()
    refused = loop.stats.refused_steps[STEP_NORM]
    assert refused >= 1 and strategy.version == 4
    assert np.all(np.abs(strategy.model[0]) <= 1.0)  # only honest half-steps ever landed
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    guarded = [e for e in history if e["event"] == "step-refused"]
    assert len(guarded) == refused and all(e["reason"] == STEP_NORM and e["step_norm"] > 100 for e in guarded)
    assert [e["version"] for e in history if e["event"] == "step"] == [1, 2, 3, 4]
    assert exporter.registry.get_sample_value("fl_steps_refused_total", {"reason": STEP_NORM}) == refused
    assert exporter.registry.get_sample_value("fl_step_norm_count") == 4
    assert loop.stats.summary()["refused_steps"] == {STEP_NORM: refused}


def test_the_guard_sees_the_unmasked_sum_under_secure_aggregation(tmp_path):
    from mask_service.masking import mask_update
    from strategies.base import MaskEnvelope
    from strategies.secure_fedbuff import SecureFedBuff
    from tests.test_mask_service import CODEC, CONTEXT, SHAPES, Federation
    from tests.test_secure_fedbuff import unmask_with

    federation = Federation(tmp_path, nodes=4, k_min=2)
    try:
        options = StrategyOptions(buffer_size=2, max_step_norm=5.0)
        secure = SecureFedBuff([np.zeros(s, np.float32) for s in SHAPES], options, CODEC, unmask_with(federation))

        def send(client, value):
            delta = [np.full(s, value, np.float32) for s in SHAPES]
            m = mask_update(delta, CODEC, federation.public_key, federation.nodes[client].key, CONTEXT)
            envelope = MaskEnvelope(m.ephemeral_public, m.signature, m.node_key_fingerprint)
            return secure.receive(ClientUpdate(client, [m.masked], 10, 0, envelope))

        send(0, 0.01)
        assert send(1, 0.01).stepped  # a small honest step passes
        send(2, 0.01)
        receipt = send(3, 7.9)  # within secagg-clip 8, invisible to validation: a step of ~19
        assert receipt.step.refused == STEP_NORM and receipt.step.norm > 5.0
        assert secure.version == 1
    finally:
        federation.service.close()


def test_an_honest_run_of_the_default_task_steps_far_below_the_default_max_step_norm(tmp_path):
    """The default's evidence: 6 honest nodes training digits with every default knob take 30
    server steps whose norms peak near 1.5 (measured: max 1.50, median 0.54). The default
    max-step-norm (100) is ~66 times that; the most aggressive honest settings measured (linear
    example weights at the default reference, 5 local epochs, K = 1, client-lr 1.0) peaked at 13."""
    settings = RunSettings()
    clients = HonestClients(settings, num_nodes=6)
    strategy = build_strategy(settings, clients.initial(), settings.concurrency)
    loop = AsyncLoop(
        FakeGrid(clients.node_ids, clients), strategy, settings, clients.evaluator(), RunRecorder(tmp_path)
    )
    loop.run()
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    norms = [e["step_norm"] for e in history if e["event"] == "step"]
    assert len(norms) == settings.max_server_steps and not loop.stats.refused_steps
    assert max(norms) < settings.max_step_norm / 20
    assert loop.evaluations[-1].accuracy > 0.9


# -- user-level DP: the guard bounds what clients steer, not the noise the privacy adds --------

DP_COORDINATES = 250_000  # averaged noise σ·C/K · √d ≈ 250: 2.5 × the default max-step-norm


def dp_settings(mode: str, momentum: float, buffer_size: int = 2) -> RunSettings:
    return RunSettings(
        strategy="fedbuff",
        concurrency=buffer_size,
        buffer_size=buffer_size,
        user_dp=True,
        user_dp_mode=mode,
        user_dp_noise_multiplier=1.0,
        user_dp_clip=1.0,
        server_optimizer="sgd",
        server_lr=1.0,
        server_momentum=momentum,
    )


def dp_strategy(settings: RunSettings) -> FedBuff:
    from strategies.dp import FlushPrivacy

    privacy = FlushPrivacy(settings, settings.dp_k_min, lambda sigma: True, rng=np.random.default_rng(3))
    return build_strategy(settings, [np.zeros(DP_COORDINATES, dtype=np.float32)], settings.concurrency, privacy)


def dp_client_delta(settings: RunSettings, rng: np.random.Generator) -> list[np.ndarray]:
    """What an honest ClientApp sends under user-level DP (the ClientApp's own clipping and share)."""
    from client_app.task import _privatize

    return _privatize([rng.normal(0.0, 1.0, DP_COORDINATES).astype(np.float32)], settings)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_honest_user_dp_steps_on_a_large_model_pass_the_default_guard(mode, momentum):
    """The noise of a flush moves a 250,000-coordinate model ~250 (L2) per step: far past the
    default max-step-norm of 100, which used to refuse every honest step of such a run."""
    settings = dp_settings(mode, momentum)
    assert settings.max_step_norm == 100.0  # the default
    strategy, rng = dp_strategy(settings), np.random.default_rng(5)
    steps = [
        receipt.step
        for client in range(24)
        if (receipt := strategy.receive(ClientUpdate(client % 2, dp_client_delta(settings, rng), 100, 0))).step
    ]
    assert len(steps) == 12 and all(step.stepped for step in steps), [(s.norm, s.bound) for s in steps]
    assert strategy.version == 12
    assert min(step.norm for step in steps) > settings.max_step_norm  # the noise really is that large


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_under_user_dp_a_step_beyond_the_noise_it_carries_is_still_refused(mode):
    """An unclipped update (a client that skips its clipping; under secure aggregation the
    server cannot clip for it) steers the model far beyond the noise: refused, model kept."""
    settings = dp_settings(mode, 0.0)
    strategy, rng = dp_strategy(settings), np.random.default_rng(7)
    liar = [np.full(DP_COORDINATES, 2.0, dtype=np.float32)]  # ‖Δ‖ = 1,000 against C = 1
    strategy.receive(ClientUpdate(0, liar, 100, 0))
    receipt = strategy.receive(ClientUpdate(1, dp_client_delta(settings, rng), 100, 0))
    assert receipt.step is not None and receipt.step.refused == STEP_NORM
    assert strategy.version == 0 and not strategy.model[0].any()
    assert settings.max_step_norm < receipt.step.bound < receipt.step.norm
