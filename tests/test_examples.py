"""The example apps (examples/) and the tests' own task app, without Flower: each declares every
engine knob, builds its model, and reads its data as docs/tasks.md says."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedbuff.settings import RunSettings
from fedbuff.task import Node, TaskError
from fedbuff.training import build_model, check_dp_compatible
from fedbuff_ops.app_task import app_defaults, app_task
from tests.conftest import ROOT, unavailable

APPS = [ROOT / "examples" / "fashion-cnn", ROOT / "examples" / "local-csv", ROOT / "tests" / "task_app"]


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.name)
def test_every_app_declares_every_engine_knob_and_names_its_own_task(app):
    config = app_defaults(app)
    assert set(RunSettings().as_dict()) <= set(config), "regenerate with fedbuff_ops.scaffold.pyproject"
    assert config["task"] == "task:Task"
    settings = RunSettings.from_run_config(config)
    build_model(app_task(app, config), settings.seed)


def fashion_task(**config):
    from fedbuff.datasets import DatasetUnavailable, load_fashion_mnist

    try:
        load_fashion_mnist(limit_train=1, limit_test=1)
    except DatasetUnavailable as err:
        unavailable(str(err))
    app = ROOT / "examples" / "fashion-cnn"
    return app_task(app, {**app_defaults(app), **config})


def test_the_fashion_cnn_is_large_has_no_batchnorm_and_dp_sgd_can_train_it():
    from torch import nn

    app = ROOT / "examples" / "fashion-cnn"
    model = build_model(app_task(app, app_defaults(app)), 0)
    assert sum(p.numel() for p in model.parameters()) >= 100_000
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    check_dp_compatible(model)


def test_fashion_nodes_hold_disjoint_shares_of_the_images_and_the_server_the_test_set():
    task = fashion_task(**{"train-limit": 600, "test-limit": 100})
    shares = [task.load_data(Node({}, i, 3)) for i in range(3)]
    assert sum(len(s.train) for s in shares) == 600
    assert all(s.train.inputs.shape[1:] == (1, 28, 28) for s in shares)
    central = task.central_data()
    assert len(central.test) == 100 and central.max_examples == 600
    import torch

    outputs = build_model(task, 0)(torch.from_numpy(shares[0].train.inputs[:4]))
    assert tuple(outputs.shape) == (4, 10)
    with pytest.raises(TaskError, match="data-split must be one of"):
        fashion_task(**{"data-split": "natural"})


def test_local_csv_reads_the_nodes_own_file_and_names_what_is_wrong_with_it(tmp_path):
    app = ROOT / "examples" / "local-csv"
    subprocess.run(
        [sys.executable, str(app / "make_csv.py"), "--nodes", "2", "--rows", "50", "--out", str(tmp_path)], check=True
    )
    first, second = (tmp_path / "node-0.csv").read_text(), (tmp_path / "node-1.csv").read_text()
    assert first.splitlines()[0] == "f0,f1,f2,f3,f4,f5,f6,f7,label" and first != second
    task = app_task(app, app_defaults(app))
    data = task.load_data(Node({"data-path": str(tmp_path / "node-1.csv")}, 1, 2))
    assert len(data.train) == 40 and data.test is not None and len(data.test) == 10
    assert data.train.inputs.dtype == np.float32 and data.train.inputs.shape == (40, 8)
    assert task.central_data() is None  # the server holds no data

    narrow = app_task(app, {**app_defaults(app), "num-features": 5})
    with pytest.raises(TaskError, match="8 feature columns, but num-features is 5"):
        narrow.load_data(Node({"data-path": str(tmp_path / "node-0.csv")}, 0, 2))
    (tmp_path / "no-label.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TaskError, match="no 'label' column"):
        task.read_csv(tmp_path / "no-label.csv")
    with pytest.raises(TaskError, match="node config has no data-path"):
        task.load_data(Node({}, 0, 2))


def test_the_test_apps_task_has_its_own_metric_and_a_node_whose_data_are_nan():
    task = app_task(ROOT / "tests" / "task_app", app_defaults(ROOT / "tests" / "task_app") | {"nan-partition": 1})
    assert [m.name for m in task.metrics] == ["hit-rate", "miss-loss"]
    assert np.isfinite(task.load_data(Node({}, 0, 2)).train.inputs).all()
    assert np.isnan(task.load_data(Node({}, 1, 2)).train.inputs).all()
