"""``fedbuff new NAME``: the files of a new app, its pyproject (every engine knob, the user's
task), the template task itself, and the refusals."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedbuff.settings import RunSettings
from fedbuff.task import Node, TaskError
from fedbuff_ops.app_task import app_defaults, app_task
from fedbuff_ops.scaffold import APP_DEFAULTS, FILES, ScaffoldError, engine_config_lines, new_app
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
BUILTIN_TASK_KNOBS = {"hidden-units", "partitioner", "dirichlet-alpha", "classes-per-partition", "tier-strength"}


def test_a_new_app_holds_the_task_its_data_maker_a_readme_and_a_flower_pyproject(tmp_path):
    app = new_app("my-app", tmp_path)
    assert app == tmp_path / "my-app"
    assert sorted(p.name for p in app.iterdir()) == sorted([*FILES.values(), "pyproject.toml"])
    project = tomllib.loads((app / "pyproject.toml").read_text())
    assert project["project"]["name"] == "my-app"
    assert project["project"]["dependencies"] == ["fedbuff-deploy"]  # the engine, installed, not copied
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server_app.app:app", "clientapp": "client_app.app:app"}
    assert flwr["publisher"] and "*.py" in flwr["fab-include"]
    assert "# my-app" in (app / "README.md").read_text()
    assert "{{" not in "".join(p.read_text() for p in app.iterdir())


def test_its_config_is_every_engine_knob_with_the_users_task_and_no_builtin_task_knobs(tmp_path):
    config = app_defaults(new_app("knobs", tmp_path))
    engine = RunSettings().as_dict()
    assert set(engine) <= set(config)
    assert set(config) - set(engine) == {"holdout-fraction", "server-test-path"}  # the template task's own
    assert not BUILTIN_TASK_KNOBS & set(config) and "test-fraction" not in config
    assert config["task"] == "task:Task"
    for key, value in engine.items():
        assert config[key] == APP_DEFAULTS.get(key, value), key
    RunSettings.from_run_config(config)  # the engine takes them


def test_the_knobs_come_in_the_projects_order_with_its_comments():
    lines = engine_config_lines()
    keys = [line.split(" = ")[0] for line in lines if not line.startswith("#")]
    project = [k for k in app_defaults(ROOT) if k in RunSettings().as_dict()]
    assert keys == project
    assert "# differential privacy (docs/privacy.md)" in lines
    assert "# the built-in tasks' own knobs (fedbuff/builtin_tasks.py), not the engine's" not in lines


def test_the_template_task_trains_on_the_files_its_data_maker_writes(tmp_path):
    app = new_app("runs", tmp_path)
    subprocess.run([sys.executable, "make_data.py", "--nodes", "2", "--examples", "50"], cwd=app, check=True)
    config = app_defaults(app)
    task = app_task(app, config)
    data = task.load_data(Node({"data-path": str(app / "data" / "node-1.npz")}, 1, 2))
    assert len(data.train) == 40 and data.test is not None and len(data.test) == 10
    assert data.train.inputs.shape == (40, 1, 28, 28) and data.train.inputs.dtype == np.float32
    assert task.central_data() is None  # a deployment: the server holds no data
    with_test = app_task(app, {**config, "server-test-path": str(app / "data" / "server-test.npz")})
    central = with_test.central_data()
    assert central is not None and len(central.test) == 1000

    import torch

    from fedbuff.training import build_model, check_dp_compatible, evaluate, train

    model = build_model(task, 0)
    check_dp_compatible(model)  # DP-SGD can train it
    cpu = torch.device("cpu")
    loss, steps = train(task, model, data.train, epochs=1, steps=2, batch_size=8, lr=0.05, seed=0, device=cpu)
    assert steps == 2 and np.isfinite(loss)
    assert set(evaluate(task, model, data.test)) == {"accuracy", "loss"}
    with pytest.raises(TaskError, match="node config has no data-path"):
        task.load_data(Node({}, 0, 1))


def test_flwr_build_packs_the_app_without_its_data(tmp_path):
    app = new_app("packed", tmp_path)
    subprocess.run([sys.executable, "make_data.py", "--nodes", "1", "--examples", "5"], cwd=app, check=True)
    built = subprocess.run(
        [str(BIN / "flwr"), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = tmp_path.glob("packed.*.fab")
    import zipfile

    names = set(zipfile.ZipFile(fab).namelist())
    assert {"pyproject.toml", "task.py", "make_data.py", "README.md"} <= names
    assert not [n for n in names if n.startswith("data/")]


def test_an_existing_folder_or_a_bad_name_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        new_app("taken", tmp_path)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(ScaffoldError, match="a letter, then letters, digits and '-'"):
        new_app("my_app", tmp_path)
    (tmp_path / "empty").mkdir()
    assert new_app("empty", tmp_path).joinpath("task.py").is_file()  # an empty folder is fine


def test_fedbuff_new_on_the_command_line(tmp_path):
    fedbuff = str(BIN / "fedbuff")
    made = subprocess.run([fedbuff, "new", "cli-app", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "make_data.py" in made.stdout and (tmp_path / "cli-app" / "task.py").is_file()
    again = subprocess.run([fedbuff, "new", "cli-app", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"[fedbuff] error: {tmp_path / 'cli-app'} already exists and is not empty; choose another NAME or --dir"
    ]


def test_the_template_files_are_the_ones_the_package_ships():
    spec = importlib.util.find_spec("fedbuff_ops")
    assert spec is not None and spec.origin is not None
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fedbuff_ops"]
    templates = Path(spec.origin).parent / "templates" / "app"
    assert all((templates / name).is_file() for name in FILES)
    assert "templates/app/*" in shipped
