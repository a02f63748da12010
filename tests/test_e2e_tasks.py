"""End to end: tasks that are not the engine's own, on real flower-superlink and flower-supernode
processes. A task of a test app (tests/task_app) with its own metric, on the warm trainer and
in Flower's per-message ClientApp process; the two examples (each node's own CSV file with a
server holding none; Fashion-MNIST's CNN under DP-SGD and secure aggregation); the app
``fedbuff new`` writes; and the tasks refused before anything starts.

Runs are short (a few server steps of a few local batches): what is checked is that the task
API's paths work, not what the models learn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedbuff_ops.launcher import LocalFederation, full_config, run_local, with_node_config
from tests.conftest import ROOT, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TASK_APP = ROOT / "tests" / "task_app"
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
# a few quick local batches, nothing the tests do not read
QUICK = "emulated-step-seconds=0.01 local-steps=2 write-plots=false metrics-port=0 checkpoint-every=0"


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def accepted_partitions(run_dir: Path) -> set[int]:
    return {e["partition"] for e in events(run_dir, "update") if e["outcome"] == "accepted"}


def final_model_metrics(app: Path, run_config: str, run_dir: Path) -> dict[str, float]:
    """The app's task's metrics of the run's final checkpoint on the task's central data,
    computed here, apart from the run."""
    from fedbuff.model import get_weights, set_weights
    from fedbuff.training import build_model, evaluate
    from fedbuff_ops.app_task import app_task

    config = full_config(run_config, app)
    task = app_task(app, config)
    model = build_model(task, int(config["seed"]))
    with np.load(run_dir / "checkpoint.npz") as checkpoint:
        set_weights(model, [checkpoint[f"arr_{i}"] for i in range(len(get_weights(model)))])
    central = task.central_data()
    assert central is not None
    return evaluate(task, model, central.test)


def test_an_apps_own_task_trains_on_warm_trainers_with_tiers_and_reports_its_own_metric(
    tmp_path, no_leftover_processes, trainer_dir
):
    run_dir = tmp_path / "run"
    run_config = f"max-server-steps=3 buffer-size=2 concurrency=2 eval-every=3 {QUICK}"
    summary = run_local(
        LocalFederation(app_dir=TASK_APP, run_dir=run_dir, num_nodes=2, tiers=["low", "high"], run_config=run_config),
        out=sys.stdout,
    )
    assert summary["task"] == "task:Task"
    assert summary["server_steps"] == 3
    assert set(summary["accepted_by_tier"]) == {"low", "high"}  # a buffer of 2 takes both nodes
    assert set(summary["final_metrics"]) == {"hit-rate", "miss-loss"}
    assert summary["final_accuracy"] is None  # it declares no "accuracy"
    evals = events(run_dir, "eval")
    assert [e["version"] for e in evals] == [0, 3]
    assert evals[-1]["metrics"] == summary["final_metrics"]
    assert summary["final_metrics"] == pytest.approx(final_model_metrics(TASK_APP, run_config, run_dir), rel=1e-5)
    assert list(Path(trainer_dir).glob("*.log")), "no warm trainer ran the task"


def test_the_same_task_trains_in_the_clientapp_process_and_a_node_training_nan_is_refused(
    tmp_path, no_leftover_processes, trainer_dir
):
    """warm-trainer=false: Flower's per-message ClientApp process imports the task. Node 2's
    features are NaN (nan-partition=2): its training yields NaN weights, every reply of it is
    refused as non-finite and counted, and the two healthy nodes carry the run to its end."""
    run_dir = tmp_path / "run"
    summary = run_local(
        LocalFederation(
            app_dir=TASK_APP,
            run_dir=run_dir,
            num_nodes=3,
            tiers=["high"],
            run_config="warm-trainer=false nan-partition=2 "
            f"max-server-steps=3 buffer-size=2 concurrency=3 eval-every=3 {QUICK}",
        ),
        out=sys.stdout,
    )
    assert summary["server_steps"] == 3
    assert summary["stop_reason"].startswith("max-server-steps")
    assert summary["rejected_by_reason"].get("non-finite", 0) >= 1
    assert accepted_partitions(run_dir) == {0, 1}
    assert set(summary["final_metrics"]) == {"hit-rate", "miss-loss"}
    assert all(np.isfinite(v) for v in summary["final_metrics"].values())
    assert not list(Path(trainer_dir).glob("*.log")), "a warm trainer ran though warm-trainer=false"


def test_local_csv_each_node_trains_on_its_own_file_and_the_server_holds_none(tmp_path, no_leftover_processes):
    data = tmp_path / "csv"
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "local-csv" / "make_csv.py"),
            "--nodes",
            "2",
            "--rows",
            "120",
            "--out",
            str(data),
        ],
        check=True,
    )
    run_dir = tmp_path / "run"
    summary = run_local(
        LocalFederation(
            app_dir=EXAMPLES / "local-csv",
            run_dir=run_dir,
            num_nodes=2,
            tiers=["high"],
            node_overrides=with_node_config({}, f'data-path="{data}/node-{{partition-id}}.csv"', 2),
            run_config=f"max-server-steps=3 buffer-size=2 concurrency=2 eval-every=3 {QUICK}",
        ),
        out=sys.stdout,
    )
    assert summary["server_steps"] == 3
    assert summary["final_metrics"] == {} and summary["initial_metrics"] == {}
    assert not summary["errors_by_reason"] and not summary["rejected_by_reason"]
    assert accepted_partitions(run_dir) == {0, 1}  # both nodes' files trained
    assert all(e["metrics"] == {} for e in events(run_dir, "eval"))
    # what the run knows of its model comes from the nodes: each evaluated on its own held-out rows
    assert set(summary["final_federated_metrics"]) == {"accuracy", "loss"}
    assert events(run_dir, "federated-eval")[-1]["version"] == 3
    recorded = json.loads((run_dir / "federation.json").read_text())
    assert recorded["nodes"][1]["node-config"] == f'data-path="{data}/node-1.csv"'  # what a resume starts


def test_fashion_cnn_trains_under_dp_sgd_with_secure_aggregation(tmp_path, no_leftover_processes):
    from fedbuff.datasets import DatasetUnavailable, load_fashion_mnist

    try:
        load_fashion_mnist(limit_train=1, limit_test=1)
    except DatasetUnavailable as err:
        unavailable(str(err))
    run_dir = tmp_path / "run"
    summary = run_local(
        LocalFederation(
            app_dir=EXAMPLES / "fashion-cnn",
            run_dir=run_dir,
            num_nodes=3,
            tiers=["high"],
            secagg=True,
            run_config=(
                "dp-sgd=true dp-noise-multiplier=0.8 train-limit=1200 test-limit=300 batch-size=16 "
                f"max-server-steps=2 buffer-size=2 concurrency=3 eval-every=2 {QUICK}"
            ),
        ),
        out=sys.stdout,
    )
    assert summary["server_steps"] == 2
    assert summary["updates_accepted"] >= 4
    assert not summary["errors_by_reason"] and not summary["rejected_by_reason"]
    assert set(summary["final_metrics"]) == {"accuracy", "loss"}
    updates = [e for e in events(run_dir, "update") if e["outcome"] == "accepted"]
    assert updates and all("norm" not in e for e in updates)  # masked: the server never saw a delta
    assert all(e["dp_epsilon"] > 0 for e in updates)  # trained with DP-SGD


def test_the_app_fedbuff_new_writes_builds_and_trains_on_real_supernodes(tmp_path, no_leftover_processes):
    fedbuff = str(BIN / "fedbuff")
    subprocess.run([fedbuff, "new", "my-task", "--dir", str(tmp_path)], check=True, capture_output=True)
    app = tmp_path / "my-task"
    subprocess.run([sys.executable, "make_data.py", "--nodes", "2", "--examples", "120"], cwd=app, check=True)
    built = subprocess.run(
        [str(BIN / "flwr"), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    result = subprocess.run(
        [
            *(fedbuff, "local", "--app-dir", ".", "--nodes", "2", "--tiers", "real"),
            *("--node-config", 'data-path="data/node-{partition-id}.npz"'),  # relative to the app, made absolute
            *("-c", f'server-test-path="{app}/data/server-test.npz"'),
            *("-c", f"max-server-steps=2 eval-every=2 {QUICK}"),
            *("--runs-dir", str(tmp_path / "runs")),
        ],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["server_steps"] == 2 and summary["task"] == "task:Task"
    assert set(summary["final_metrics"]) == {"accuracy", "loss"}
    assert accepted_partitions(summary_path.parent) == {0, 1}
    assert "accuracy  " in result.stdout  # the printed summary


@pytest.mark.parametrize(
    ("run_config", "says"),
    [
        (
            'task="task:BatchNormTask" dp-sgd=true',
            r"DP-SGD \(dp-sgd = true\) cannot train this model: .*layer '1' \(BatchNorm1d\).*ModuleValidator\.fix",
        ),
        ('task="nosuch:Task"', r"task nosuch:Task: cannot import nosuch: ModuleNotFoundError"),
        ('task="broken:Task"', r"task broken:Task: cannot import broken: .*No module named 'fedbuff_no_such_module'"),
    ],
)
def test_a_task_that_cannot_work_is_refused_in_one_line_before_anything_starts(
    tmp_path, no_leftover_processes, run_config, says
):
    import re

    result = subprocess.run(
        [str(BIN / "fedbuff"), "local", "--app-dir", str(TASK_APP), "--nodes", "2", "-c", run_config],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[fedbuff] error: run config: "), result.stderr
    assert re.search(says, lines[0]), lines[0]
    assert "starting flower-superlink" not in result.stdout
    assert not list(tmp_path.rglob("superlink.log"))
