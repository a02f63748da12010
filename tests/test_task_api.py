"""The task API (fedbuff/task.py) as a user's task meets it: loading by reference, the engine's
loop and hook, metrics by name, a node's data, and the one-line errors of a task that cannot
work. In process, no Flower processes."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from client_app import task as client
from client_app.node import NodeProfile
from fedbuff import protocol
from fedbuff.builtin_tasks import BundledTask
from fedbuff.model import get_weights
from fedbuff.settings import RunSettings
from fedbuff.task import Examples, Metric, Node, NodeData, Task, TaskError, load_task
from fedbuff.training import build_model, evaluate, train
from fedbuff_ops.launcher import RunConfigError, run_task

USER_TASK = '''
import numpy as np
import torch
from torch import nn

from fedbuff.task import CentralData, Examples, Metric, NodeData, Task


class Linear(Task):
    """y = 2x + 1 from 4 features; its own metric, lower is better."""

    metrics = (Metric("mae", higher_is_better=False),)

    def model(self):
        return nn.Linear(4, 1)

    def load_data(self, node):
        rng = np.random.default_rng(node.partition_id)
        x = rng.normal(size=(int(self.config.get("rows", 40)), 4)).astype(np.float32)
        y = (2 * x.sum(axis=1, keepdims=True) + 1).astype(np.float32)
        held_out = int(self.config.get("held-out", 0))
        test = Examples(x[:held_out], y[:held_out]) if held_out else None
        return NodeData(Examples(x[held_out:], y[held_out:]), test)

    def central_data(self):
        return CentralData(self.load_data(type("N", (), {"partition_id": 99})()).train)

    def loss(self, outputs, targets):
        return nn.functional.mse_loss(outputs, targets)

    def example_metrics(self, outputs, targets):
        return {"mae": (outputs - targets).abs().mean(dim=1)}


def broken(config):
    return "not a task"


class NoModel(Task):
    def model(self):
        return 42

    def load_data(self, node):
        raise FileNotFoundError("no such file: /data/node.csv")
'''


@pytest.fixture
def user_app(tmp_path, monkeypatch):
    """A folder with a task.py, first on sys.path as Flower puts an app's folder."""
    (tmp_path / "usertask.py").write_text(textwrap.dedent(USER_TASK))
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app.config]\ntask = "usertask:Linear"\nrows = 40\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path


def test_a_reference_loads_a_builtin_or_the_apps_own_task_with_the_run_config(user_app):
    assert isinstance(load_task("digits", {"hidden-units": 8}), BundledTask)
    task = load_task("usertask:Linear", {"rows": 12})
    assert task.config["rows"] == 12 and task.metrics == (Metric("mae", False),)
    assert len(task.load_data(Node({}, 0, 2)).train) == 12


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nosuchmodule:Task", r"task nosuchmodule:Task: cannot import nosuchmodule: ModuleNotFoundError"),
        ("usertask:Missing", "task usertask:Missing: module usertask has no Missing"),
        ("usertask:broken", r"broken\(run_config\) returned str, not a fedbuff Task"),
        ("not a reference", "must be a built-in task"),
    ],
)
def test_a_task_that_cannot_be_loaded_is_one_line_naming_it(user_app, reference, message):
    with pytest.raises(TaskError, match=message) as caught:
        load_task(reference, {})
    assert "\n" not in str(caught.value)


def test_the_engine_seeds_the_model_and_refuses_what_is_not_a_module(user_app):
    task = load_task("usertask:Linear", {})
    first, again = get_weights(build_model(task, 3)), get_weights(build_model(task, 3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with pytest.raises(TaskError, match=r"model\(\) returned int, not a torch.nn.Module"):
        build_model(load_task("usertask:NoModel", {}), 0)


def test_the_engine_trains_with_the_tasks_loss_and_evaluates_its_own_metric(user_app):
    task = load_task("usertask:Linear", {"rows": 200})
    model = build_model(task, 0)
    data = task.load_data(Node({}, 0, 1)).train
    before = evaluate(task, model, data)
    _, steps = train(task, model, data, epochs=5, steps=0, batch_size=20, lr=0.05, seed=0, device=torch.device("cpu"))
    after = evaluate(task, model, data)
    assert steps == 50 and set(after) == {"mae"}
    assert after["mae"] < before["mae"] / 4


def test_the_training_step_hook_gets_the_engines_optimizer_and_every_batch():
    calls = []

    class Clipped(Task):
        def model(self):
            return torch.nn.Linear(3, 2)

        def load_data(self, node):
            return NodeData(Examples(np.ones((10, 3), np.float32), np.zeros(10, np.int64)))

        def train_step(self, model, inputs, targets, optimizer):
            optimizer.zero_grad()
            loss = self.loss(model(inputs), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            optimizer.step()
            calls.append(len(targets))
            return loss

    task = Clipped()
    model = build_model(task, 0)
    before = get_weights(model)
    train(task, model, task.load_data(Node({})).train, epochs=2, steps=3, batch_size=4, lr=1.0, seed=0, device="cpu")
    assert calls == [4, 4, 2]
    moved = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(before, get_weights(model)))))
    assert 0 < moved <= 3 * 0.01 + 1e-6  # three clipped steps at lr 1


def test_a_metric_the_task_declares_but_does_not_compute_is_one_line():
    class Forgetful(Task):
        metrics = (Metric("f1"),)

        def model(self):
            return torch.nn.Linear(2, 2)

    task = Forgetful()
    with pytest.raises(TaskError, match="example_metrics\\(\\) gave \\['accuracy', 'loss'\\], not the declared 'f1'"):
        evaluate(task, build_model(task, 0), Examples(np.ones((3, 2), np.float32), np.zeros(3, np.int64)))


def test_a_node_path_is_its_node_config_and_a_missing_one_says_what_to_pass(tmp_path):
    (tmp_path / "node.csv").write_text("x\n")
    assert Node({"data-path": str(tmp_path / "node.csv")}).path() == tmp_path / "node.csv"
    with pytest.raises(TaskError, match=r"node config has no data-path .start the SuperNode with --node-config"):
        Node({}).path()
    with pytest.raises(TaskError, match=r"data-path .*nope.csv does not exist on this node"):
        Node({"data-path": str(tmp_path / "nope.csv")}).path()


def context_for(task: str, partition: int = 0, **run_config) -> Context:
    config = {"task": task, "local-steps": 2, "batch-size": 8, "emulated-step-seconds": 0.0, **run_config}
    node_config = {"partition-id": partition, "num-partitions": 2, "device-tier": "real"}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=config)


def dispatch(model: list[np.ndarray], version: int = 0) -> RecordDict:
    return RecordDict(
        {protocol.ARRAYS: ArrayRecord(model), protocol.CONFIG: ConfigRecord({protocol.SERVER_VERSION: version})}
    )


@pytest.mark.parametrize("source", [client.local_data, client.MemoryData()])
def test_a_node_trains_the_users_task_and_replies_the_delta(user_app, source):
    context = context_for("usertask:Linear", rows=24)
    model = get_weights(build_model(load_task("usertask:Linear", {}), 42))
    reply = client.train_task(dispatch(model), context, source)
    delta = reply.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    assert [d.shape for d in delta] == [m.shape for m in model]
    assert any(np.abs(d).sum() > 0 for d in delta)
    assert reply.metric_records[protocol.METRICS][protocol.NUM_EXAMPLES] == 24


def test_a_nodes_missing_data_is_one_line_naming_the_task_and_the_node(user_app):
    context = context_for("usertask:NoModel", partition=1)
    with pytest.raises(TaskError, match=r"task usertask:NoModel on the node of partition 1: load_data failed: "):
        client.local_data(context, RunSettings.from_run_config(context.run_config), NodeProfile(1, 2))


def test_a_task_whose_training_diverges_replies_a_non_finite_delta_the_server_refuses(user_app):
    from server_app.validation import Rejection, validate_reply

    context = context_for("usertask:Linear", **{"client-lr": 1e30})
    model = get_weights(build_model(load_task("usertask:Linear", {}), 42))
    reply = client.train_task(dispatch(model), context, client.MemoryData())
    verdict = validate_reply(reply, template=model, max_update_norm=1e40, max_bytes=10**6, max_num_examples=1000)
    assert isinstance(verdict, Rejection) and verdict.reason == "non-finite"


def test_dp_sgd_runs_the_tasks_own_step(user_app):
    """Under DP-SGD the hook gets Opacus' optimizer and Poisson batches (a regression task here)."""
    from client_app.dp_sgd import train_dp_sgd
    from fedbuff.settings import DPSGDOptions

    task = load_task("usertask:Linear", {"rows": 64})
    model = build_model(task, 0)
    before = get_weights(model)
    options = DPSGDOptions(dp_sgd=True, dp_noise_multiplier=0.5)
    result = train_dp_sgd(
        model, task.load_data(Node({})).train, task=task, options=options, epochs=1, steps=3, batch_size=16, lr=0.05
    )
    assert result.steps == 3 and result.epsilon > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, get_weights(model)))


def test_the_launcher_refuses_a_task_that_cannot_work_before_anything_starts(user_app):
    with pytest.raises(RunConfigError, match="cannot import nosuch"):
        run_task('task="nosuch:Task"', user_app)
    (user_app / "bn.py").write_text(
        "from torch import nn\nfrom fedbuff.task import Task\n\n"
        "class Net(Task):\n    def model(self):\n        return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))\n"
    )
    with pytest.raises(RunConfigError, match=r"refuses layer '1' \(BatchNorm1d\).*ModuleValidator.fix") as caught:
        run_task('task="bn:Net" dp-sgd=true', user_app, check=True)
    assert "\n" not in str(caught.value)
    assert run_task('task="bn:Net"', user_app, check=True).name == "task bn:Net"  # without DP it trains


def test_a_node_evaluates_the_model_on_its_held_out_split_and_replies_metrics_only(user_app):
    context = context_for("usertask:Linear", rows=40, **{"held-out": 8})
    model = get_weights(build_model(load_task("usertask:Linear", {}), 42))
    reply = client.evaluate_task(dispatch(model), context, client.local_data)
    assert not reply.array_records  # nothing but numbers about the whole held-out split
    metrics = reply.metric_records[protocol.METRICS]
    assert metrics[protocol.NUM_EXAMPLES] == 8 and metrics["mae"] > 0
    assert client.TEST_KEY in context.state.array_records  # small data: kept for the next message
    again = client.evaluate_task(dispatch(model), context, client.local_data)
    assert again.metric_records[protocol.METRICS]["mae"] == pytest.approx(metrics["mae"])


def test_a_node_without_a_held_out_split_says_so_in_one_line(user_app):
    context = context_for("usertask:Linear")
    model = get_weights(build_model(load_task("usertask:Linear", {}), 42))
    with pytest.raises(TaskError, match="on the node of partition 0: no held-out split to evaluate"):
        client.evaluate_task(dispatch(model), context, client.MemoryData())


def test_the_trainer_protocol_carries_what_a_request_asks():
    import socket

    from client_app import trainer_protocol as wire

    left, right = socket.socketpair()
    with left, right:
        for kind in wire.REQUEST_KINDS:
            wire.send_request(left, wire.TrainRequest(1, 2, {"task": "digits"}, {}, RecordDict(), RecordDict(), kind))
            assert wire.read_request(right).kind == kind


def test_float64_examples_train_as_float32():
    """A loader that hands over float64 arrays (np.loadtxt's default) trains all the same."""

    class Doubles(Task):
        def model(self):
            return torch.nn.Linear(3, 2)

    task = Doubles()
    data = Examples(np.random.default_rng(0).normal(size=(12, 3)), np.zeros(12, np.int64))
    _, steps = train(task, build_model(task, 0), data, epochs=1, steps=0, batch_size=4, lr=0.1, seed=0, device="cpu")
    assert steps == 3 and set(evaluate(task, build_model(task, 0), data)) == {"accuracy", "loss"}
