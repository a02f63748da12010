"""Crash-safe checkpoints: round trip, atomic writes, corruption, fallback, and resume."""

import json
import logging
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedbuff.settings import RunSettings, SettingsError
from server_app import checkpoint
from server_app.app import main
from server_app.checkpoint import (
    LATEST,
    PREVIOUS,
    CheckpointError,
    CheckpointWriter,
    ServerState,
    load,
    load_latest,
    save,
    snapshot,
)
from server_app.loop import AsyncLoop, Evaluation
from server_app.privacy import UserLevelAccountant
from server_app.records import RunRecorder
from server_app.stats import RunStats
from strategies import ClientUpdate, build_strategy
from tests.fakes import FakeGrid, distance_accuracy, half_step, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros(4, np.float32), np.zeros((2, 3), np.float32)]


def a_state(version=3, **overrides) -> ServerState:
    """A state with every part filled: Adam moments, an accountant, counters, evaluations."""
    settings = RunSettings(server_optimizer="adam", server_lr=0.1, buffer_size=1)
    strategy = build_strategy(settings, INITIAL, 1)
    for step in range(version):
        strategy.receive(ClientUpdate(1, [np.full_like(a, 0.1 * (step + 1)) for a in INITIAL], 10, 0))
    accountant = UserLevelAccountant(1.1, 1e-5)
    accountant.step(num_steps=version)
    stats = RunStats(
        dispatched=7,
        outcomes=Counter(accepted=5, stale=1),
        errors=Counter({"ttl-expired": 1}),
        staleness=Counter({0: 3, 2: 2}),
        accepted_by_tier=Counter(high=5),
        rejected=Counter({"shape": 1}),
        round_trip_sum=1.5,
        replies=6,
    )
    fields = dict(
        model=strategy.model,
        version=strategy.version,
        strategy="fedbuff",
        optimizer=strategy.optimizer.state_dict(),
        accountant=accountant.state_dict(),
        stats=stats,
        evaluations=[
            Evaluation(0, {"loss": 2.3, "accuracy": 0.1}),
            Evaluation(version, {"loss": 1.2, "accuracy": 0.6}),
        ],
        in_flight=2,
        buffer_fill=1,
    )
    return ServerState(**{**fields, **overrides})


def assert_same(a: ServerState, b: ServerState) -> None:
    assert b.version == a.version and b.strategy == a.strategy
    assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a.model, b.model, strict=True))
    assert a.optimizer.keys() == b.optimizer.keys()
    assert all(np.array_equal(a.optimizer[k], b.optimizer[k]) for k in a.optimizer)
    assert (b.accountant, b.stats, b.evaluations) == (a.accountant, a.stats, a.evaluations)
    assert (b.in_flight, b.buffer_fill) == (a.in_flight, a.buffer_fill)


def test_round_trip_keeps_model_version_optimizer_accountant_and_counters(tmp_path):
    state = a_state()
    save(tmp_path / LATEST, state)
    loaded = load(tmp_path / LATEST)
    assert_same(state, loaded)
    assert loaded.optimizer["steps"] == 3 and {"m.0", "v.1"} <= loaded.optimizer.keys()
    restored = UserLevelAccountant.from_state_dict(loaded.accountant)
    assert restored.epsilon() == pytest.approx(UserLevelAccountant.from_state_dict(state.accountant).epsilon())


def test_the_restored_strategy_steps_exactly_like_the_uninterrupted_one(tmp_path):
    settings = RunSettings(server_optimizer="adam", server_lr=0.1, buffer_size=1)
    state = a_state()
    save(tmp_path / LATEST, state)
    loaded = load(tmp_path / LATEST)
    original = build_strategy(settings, state.model, 1)
    original.optimizer.load_state_dict(state.optimizer)
    resumed = build_strategy(settings, INITIAL, 1)
    resumed.load_state_dict({"model": loaded.model, "version": loaded.version, "optimizer": loaded.optimizer})
    assert resumed.version == 3
    update = ClientUpdate(2, [np.full_like(a, 0.5) for a in INITIAL], 10, 0)
    original.receive(update)
    resumed.receive(update)
    assert all(np.array_equal(x, y) for x, y in zip(original.model, resumed.model, strict=True))


def test_the_file_stays_readable_as_a_plain_model_checkpoint(tmp_path):
    save(tmp_path / LATEST, a_state())
    with np.load(tmp_path / LATEST) as npz:
        assert int(npz["version"]) == 3 and npz["arr_1"].shape == (2, 3)
        assert all(np.isfinite(npz[k]).all() for k in npz.files)


def test_a_failed_write_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / LATEST
    save(path, a_state(version=2))
    before = path.read_bytes()

    def crash_midway(file, **entries):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        CheckpointWriter(tmp_path).write(a_state(version=3))
    assert path.read_bytes() == before
    assert load(path).version == 2
    assert [p.name for p in tmp_path.glob("*checkpoint*")] == [LATEST]  # no temp file left behind


def test_the_writer_keeps_the_previous_checkpoint(tmp_path):
    writer = CheckpointWriter(tmp_path)
    for version in (1, 2, 3):
        writer.write(a_state(version=version))
    assert load(tmp_path / LATEST).version == 3
    assert load(tmp_path / PREVIOUS).version == 2


def corrupt(path):
    """Flip one byte inside the stored bytes of the ``meta`` entry (bit rot on disk)."""
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("meta.npy")
    data = bytearray(path.read_bytes())
    data[member.header_offset + member.compress_size] ^= 0xFF  # past the headers, inside the data
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_model_byte(path):
    """Rewrite a consistent zip with one model value changed: only the SHA-256 catches it."""
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["arr_0"] = entries["arr_0"] + np.float32(1.0)
    np.savez(path, **entries)


@pytest.mark.parametrize("damage", [corrupt, truncate, flip_a_model_byte])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_previous_is_used(tmp_path, damage, caplog):
    writer = CheckpointWriter(tmp_path)
    writer.write(a_state(version=2))
    writer.write(a_state(version=4))
    damage(tmp_path / LATEST)
    with pytest.raises(CheckpointError, match=str(tmp_path / LATEST)):
        load(tmp_path / LATEST)
    with caplog.at_level(logging.INFO, logger="server_app.checkpoint"):
        state, used = load_latest(tmp_path)
    assert (state.version, used) == (2, tmp_path / PREVIOUS)
    assert f"resuming from {tmp_path / PREVIOUS}" in caplog.text
    # the next write keeps the good previous one rather than the damaged newest
    CheckpointWriter(tmp_path).write(a_state(version=5))
    assert (load(tmp_path / LATEST).version, load(tmp_path / PREVIOUS).version) == (5, 2)


def test_no_good_checkpoint_is_a_clear_error_naming_each_file(tmp_path):
    save(tmp_path / LATEST, a_state())
    truncate(tmp_path / LATEST)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as err:
        load_latest(tmp_path)
    assert str(tmp_path / LATEST) in str(err.value) and str(tmp_path / PREVIOUS) in str(err.value)


def test_a_named_checkpoint_file_is_tried_first(tmp_path):
    writer = CheckpointWriter(tmp_path)
    writer.write(a_state(version=2))
    writer.write(a_state(version=4))
    state, used = load_latest(tmp_path / PREVIOUS)
    assert (state.version, used) == (2, tmp_path / PREVIOUS)


def test_restore_refuses_a_model_of_another_shape_and_foreign_optimizer_state():
    strategy = build_strategy(RunSettings(), INITIAL, 1)
    with pytest.raises(ValueError, match="shapes"):
        strategy.load_state_dict({"model": [np.zeros(5, np.float32)], "version": 3})
    with pytest.raises(ValueError, match="unexpected optimizer state key"):
        strategy.load_state_dict({"model": INITIAL, "version": 3, "optimizer": {"steps": 3, "m.0": np.zeros(4)}})
    fedasync = build_strategy(RunSettings(strategy="fedasync"), INITIAL, 1)
    with pytest.raises(ValueError, match="no server optimizer"):
        fedasync.load_state_dict({"model": INITIAL, "version": 3, "optimizer": {"steps": 3}})
    assert strategy.version == 0 and fedasync.version == 0  # a refused restore changes nothing


# -- the loop: checkpoint cadence and resume -----------------------------------------------


def make_loop(tmp_path, grid, **overrides):
    settings = RunSettings(
        **{
            "concurrency": 3,
            "buffer_size": 2,
            "eval_every": 1,
            "server_optimizer": "sgd",
            "server_momentum": 0.9,
            **overrides,
        }
    )
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    writer = CheckpointWriter(tmp_path)

    def on_step(loop):
        if settings.checkpoint_every and loop.strategy.version % settings.checkpoint_every == 0:
            writer.write(snapshot(loop, settings.strategy, None))

    return AsyncLoop(grid, strategy, settings, distance_accuracy, RunRecorder(tmp_path), on_step=on_step)


def test_a_resumed_loop_continues_version_and_counters(tmp_path):
    first = make_loop(
        tmp_path, FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step)), max_server_steps=6, checkpoint_every=3
    )
    first.run()
    assert first.strategy.version == 6
    state, _ = load_latest(tmp_path)
    assert state.version == 6 and load(tmp_path / PREVIOUS).version == 3
    assert state.stats == first.stats and state.evaluations == first.evaluations
    assert state.optimizer["steps"] == 6 and "velocity.0" in state.optimizer

    grid = FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step))
    second = make_loop(tmp_path, grid, max_server_steps=10, checkpoint_every=3)
    second.strategy.load_state_dict({"model": state.model, "version": state.version, "optimizer": state.optimizer})
    second.stats, second.evaluations = state.stats, list(state.evaluations)
    accepted_before, dispatched_before = state.stats.accepted, state.stats.dispatched
    second.run()
    assert second.strategy.version == 10
    assert {int(m.content.config_records["config"]["server-version"]) for m in grid.pushed} >= {6}
    assert min(int(m.content.config_records["config"]["server-version"]) for m in grid.pushed) == 6
    assert second.stats.dispatched == dispatched_before + len(grid.pushed)
    assert second.stats.accepted >= accepted_before + 2 * 4  # four more steps of K = 2
    assert [e.version for e in second.evaluations] == list(range(11))  # no version evaluated twice
    assert load(tmp_path / LATEST).version == 9  # the cadence: 3, 6, 9 (the end is the app's)


class StrayReplyGrid(FakeGrid):
    """Also delivers, once, a reply to a task this loop never pushed (one from before a restart)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stray_sent = False

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        if not self.stray_sent and self.pushed:
            self.stray_sent = True
            stranger = Message(self.pushed[0].content, dst_node_id=1, message_type=MessageType.TRAIN)
            stranger.metadata.__dict__["_message_id"] = "sent-before-the-crash"
            replies.append(train_reply(stranger, half_step))
        return replies


def test_a_reply_to_an_unknown_task_is_ignored_and_logged(tmp_path, caplog):
    grid = StrayReplyGrid([1, 2, 3], lambda m: train_reply(m, half_step))
    loop = make_loop(tmp_path, grid, max_server_steps=3, checkpoint_every=0)
    with caplog.at_level(logging.WARNING, logger="server_app.loop"):
        loop.run()
    assert grid.stray_sent
    assert "ignoring a reply to an unknown task sent-before-the-crash" in caplog.text
    assert loop.strategy.version == 3
    assert loop.stats.replies == loop.stats.accepted == len(grid.pushed) - len(loop.tasks)
    assert not list(tmp_path.glob("*checkpoint*"))  # checkpoint-every 0: only the app's final one


# -- settings ------------------------------------------------------------------------------


def test_checkpoint_and_resume_knobs_parse():
    settings = RunSettings.from_run_config({"checkpoint-every": 0, "resume-from": "runs/a/checkpoint.npz"})
    assert settings.checkpoint_every == 0
    assert str(settings.resume_dir()) == "runs/a"
    assert str(RunSettings(resume_from="runs/a").resume_dir()) == "runs/a"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"checkpoint-every": -1}, "checkpoint-every must be >= 0"),
        ({"checkpoint-every": 2.5}, "checkpoint-every must be int"),
        ({"resume-from": "runs/a", "strategy": "flower-fedavg"}, "strategy must be an asynchronous strategy"),
        ({"resume-from": "runs/a", "run-dir": "runs/b"}, "run-dir must be empty or the folder resume-from names"),
    ],
)
def test_bad_checkpoint_knobs_fail_at_start_up(config, message):
    with pytest.raises(SettingsError, match=message):
        RunSettings.from_run_config(config)


def test_resume_into_the_same_run_dir_is_allowed():
    assert RunSettings(resume_from="runs/a/checkpoint.npz", run_dir="runs/a").resume_dir().name == "a"


# -- the ServerApp: a crashed run resumed from its folder ------------------------------------


def run_server_app(grid, **config):
    """Call the ServerApp's main with a FakeGrid, as the SuperLink would with a real one."""
    base = {
        "concurrency": 3,
        "buffer-size": 2,
        "eval-every": 1,
        "metrics-enabled": False,
        "write-plots": False,
        "user-dp": True,
        "user-dp-noise-multiplier": 1.0,
    }
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={**base, **config}))
    return json.loads((Path(config.get("run-dir") or config["resume-from"]) / "summary.json").read_text())


def test_the_server_app_resumes_a_run_folder_continuing_version_counters_and_epsilon(tmp_path):
    run_dir = tmp_path / "run"
    first = run_server_app(
        FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step)),
        **{"max-server-steps": 6, "checkpoint-every": 4, "run-dir": str(run_dir)},
    )
    assert (first["server_steps"], load(run_dir / PREVIOUS).version) == (6, 4)
    grid = FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step))
    second = run_server_app(grid, **{"max-server-steps": 10, "resume-from": str(run_dir)})
    assert second["server_steps"] == 10 and load(run_dir / LATEST).version == 10
    assert min(int(m.content.config_records["config"]["server-version"]) for m in grid.pushed) == 6
    assert second["tasks_dispatched"] == first["tasks_dispatched"] + len(grid.pushed)
    assert second["updates_accepted"] >= first["updates_accepted"] + 8
    assert second["user_dp_epsilon"] > first["user_dp_epsilon"] > 0
    assert second["initial_accuracy"] == first["initial_accuracy"]  # the evaluations continue too
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["version"] == 6
    assert [e["version"] for e in events if e["event"] == "step"] == list(range(1, 11))


def test_a_fresh_run_into_a_folder_holding_another_run_is_refused_and_its_history_kept(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_server_app(
        FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step)), **{"max-server-steps": 2, "run-dir": str(run_dir)}
    )
    history = (run_dir / "metrics.jsonl").read_text()
    grid = FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step))
    with caplog.at_level(logging.ERROR, logger="server_app.app"), pytest.raises(SettingsError, match="resume-from it"):
        run_server_app(grid, **{"max-server-steps": 2, "run-dir": str(run_dir)})
    assert "already holds a run" in caplog.text and not grid.pushed
    assert (run_dir / "metrics.jsonl").read_text() == history


def test_the_server_app_refuses_a_checkpoint_of_another_strategy(tmp_path):
    save(tmp_path / LATEST, a_state(strategy="fedasync", optimizer={}))
    with pytest.raises(CheckpointError, match="strategy 'fedasync'"):
        run_server_app(FakeGrid([1], lambda m: None), **{"resume-from": str(tmp_path)})


def test_the_server_app_refuses_to_resume_with_user_dp_switched(tmp_path):
    save(tmp_path / LATEST, a_state())  # a run with user-level DP accounting
    with pytest.raises(CheckpointError, match="user-dp must be True"):
        run_server_app(FakeGrid([1], lambda m: None), **{"resume-from": str(tmp_path), "user-dp": False})


def test_a_checkpoint_that_cannot_be_written_costs_the_checkpoint_not_the_run(tmp_path, monkeypatch, caplog):
    def disk_full(self, state):
        raise OSError("disk full")

    monkeypatch.setattr(CheckpointWriter, "write", disk_full)
    with caplog.at_level(logging.ERROR, logger="server_app"):
        summary = run_server_app(
            FakeGrid([1, 2, 3], lambda m: train_reply(m, half_step)),
            **{"max-server-steps": 4, "checkpoint-every": 2, "run-dir": str(tmp_path / "run")},
        )
    assert summary["server_steps"] == 4
    assert "checkpoint at version 2 not written" in caplog.text


def test_a_checkpoint_written_before_tasks_had_metrics_still_reads():
    from server_app.checkpoint import _evaluation

    assert _evaluation([3, 1.2, 0.6]) == Evaluation(3, {"loss": 1.2, "accuracy": 0.6})
    assert _evaluation([4, {"mae": 0.5}, {"mae": 0.7}]).quality == {"mae": 0.5}
