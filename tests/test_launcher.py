"""The launcher's run-config handling: layered overrides and the config that resumes a run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time

import pytest
from flwr.common.config import parse_config_args

from fedbuff.settings import RunSettings
from fedbuff_ops.app_copy import copy_app
from fedbuff_ops.cli import resume_federation
from fedbuff_ops.federation_record import FederationRecord
from fedbuff_ops.launcher import (
    LaunchError,
    LocalFederation,
    ProcessGroup,
    RunningFederation,
    find_binary,
    resume_config,
)
from fedbuff_ops.process_tree import ProcessId, descendants
from tests.conftest import ROOT


def run_configs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--run-config"]


def test_each_override_layer_is_its_own_run_config_and_the_later_one_wins(tmp_path):
    federation = LocalFederation(app_dir=ROOT, run_dir=tmp_path / "run", run_config="max-server-steps=40")
    running = RunningFederation(
        federation,
        ProcessGroup(),
        env={},
        binaries={"flwr": "flwr"},
        port=1,
        overrides=['secagg-address="127.0.0.1:9"'],
    )
    layers = run_configs(running.run_argv("max-server-steps=3"))
    assert len(layers) == 3
    merged = parse_config_args(layers)
    assert merged["max-server-steps"] == 3
    assert merged["run-dir"] == str((tmp_path / "run").resolve())
    assert merged["secagg-address"] == "127.0.0.1:9"


def test_resume_config_continues_the_folders_settings_with_overrides_on_top(tmp_path):
    settings = RunSettings(buffer_size=4, strategy="fedasync", server_lr=0.5, run_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(settings.as_dict()))
    config = parse_config_args([resume_config(tmp_path, ["max-server-steps=99"])])
    resumed = RunSettings.from_run_config(config)
    assert (resumed.buffer_size, resumed.strategy, resumed.server_lr) == (4, "fedasync", 0.5)
    assert resumed.max_server_steps == 99
    assert resumed.resume_from == str(tmp_path.resolve())
    assert "run-dir" not in config  # the launcher names the folder itself


def test_resume_config_names_what_is_wrong(tmp_path):
    with pytest.raises(LaunchError, match="not a run folder"):
        resume_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LaunchError, match="run-config overrides"):
        resume_config(tmp_path, ['a="x" a=1'])


def test_a_missing_flower_binary_is_a_clear_error():
    with pytest.raises(LaunchError, match="'flower-nonexistent' not found"):
        find_binary("flower-nonexistent")


# -- resume is the same federation --------------------------------------------------------------


def started(tmp_path, **fields) -> LocalFederation:
    """A run folder as ``fedbuff local`` leaves it: its settings and the federation it started."""
    federation = LocalFederation(app_dir=ROOT, run_dir=tmp_path, **fields)
    (tmp_path / "config.json").write_text(json.dumps(RunSettings(run_dir=str(tmp_path)).as_dict()))
    federation.record().write(tmp_path)
    return federation


def test_the_federation_record_round_trips_nodes_tiers_partitions_and_node_config(tmp_path):
    federation = started(
        tmp_path, num_nodes=3, tiers=["low", "high"], node_overrides={2: 'test-fault="nan"'}, secagg=True
    )
    data = json.loads((tmp_path / "federation.json").read_text())
    assert [(n["partition-id"], n["num-partitions"], n["device-tier"]) for n in data["nodes"]] == [
        (0, 3, "low"),
        (1, 3, "high"),
        (2, 3, "low"),
    ]
    assert FederationRecord.read(tmp_path) == federation.record()
    assert FederationRecord.read(tmp_path / "elsewhere") is None


def test_resume_starts_the_recorded_federation_by_default(tmp_path):
    started(tmp_path, num_nodes=3, tiers=["high"], node_overrides={1: 'test-fault="nan"'})
    federation = resume_federation(tmp_path, ["max-server-steps=10"], ROOT)
    assert federation.num_nodes == 3 and [federation.tier_of(i) for i in range(3)] == ["high"] * 3
    assert federation.node_config(1) == 'partition-id=1 num-partitions=3 device-tier="high" test-fault="nan"'
    assert federation.log_dir.name.startswith("logs-resume-")
    config = parse_config_args([federation.run_config])
    assert config["max-server-steps"] == 10 and config["resume-from"] == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"nodes": 6}, "3 nodes -> 6 (num-partitions 3 -> 6"),
        ({"tiers": "low,mid,high"}, "tiers high,high,high -> low,mid,high"),
    ],
)
def test_resume_refuses_a_different_federation_saying_what_differs(tmp_path, options, says):
    started(tmp_path, num_nodes=3, tiers=["high"])
    with pytest.raises(LaunchError, match=re.escape(says)) as refused:
        resume_federation(tmp_path, [], ROOT, **options)
    assert "--new-federation" in str(refused.value)
    changed = resume_federation(tmp_path, [], ROOT, new_federation=True, **options)
    assert changed.record() != FederationRecord.read(tmp_path)


def test_resume_of_a_folder_without_a_record_needs_the_explicit_flag(tmp_path):
    started(tmp_path, num_nodes=3)
    (tmp_path / "federation.json").unlink()
    with pytest.raises(LaunchError, match="records no federation"):
        resume_federation(tmp_path, [], ROOT, nodes=3)
    assert resume_federation(tmp_path, [], ROOT, nodes=3, tiers="high", new_federation=True).num_nodes == 3


def test_a_secure_aggregation_resume_takes_its_new_mask_service_address(tmp_path):
    federation = started(tmp_path, num_nodes=3, secagg=True)
    settings = RunSettings(run_dir=str(tmp_path), secagg=True, secagg_address="127.0.0.1:1111")
    (tmp_path / "config.json").write_text(json.dumps(settings.as_dict()))
    resumed = resume_federation(tmp_path, [], ROOT)
    assert resumed.secagg and "secagg-address" not in parse_config_args([resumed.run_config])
    assert resumed.record() == federation.record()


def test_the_cli_refuses_a_different_federation_with_a_one_line_error(tmp_path, capsys):
    from fedbuff_ops.cli import main

    started(tmp_path, num_nodes=3, tiers=["high"])
    assert main(["resume", str(tmp_path), "--nodes", "6"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("[fedbuff] error:") and "3 nodes -> 6" in error and len(error.splitlines()) == 1


def test_stopping_ends_what_a_child_started_in_a_session_of_its_own(tmp_path):
    """Flower's SuperExec (and the apps it starts) leave our child's process group: stop_all
    still ends them, and at once rather than when they notice their parent is gone."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    group = ProcessGroup()
    group.start("parent", [sys.executable, "-c", script], env=dict(os.environ), log_path=tmp_path / "parent.log")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started its grandchild"
        time.sleep(0.05)
    (grandchild,) = [p for p in descendants([os.getpid()]) if p.pid == int(pid_file.read_text())]
    assert grandchild.alive()
    group.stop_all(grace_seconds=5)
    assert not grandchild.alive()


def test_a_reused_pid_is_never_signalled():
    me = ProcessId(os.getpid(), started=1)  # this pid, but another start time: not the process recorded
    assert not me.alive()
    me.signal(signal.SIGKILL)  # a no-op, or pytest would be dead


def test_flwr_run_builds_from_a_copy_without_ignored_folders_and_gets_the_same_fab(tmp_path):
    """Flower walks the whole app folder before it filters: the copy leaves out what .gitignore
    ignores (a virtual environment of 50,000 files, here a small one), and the FAB is the same."""
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / "app"
    shutil.copytree(ROOT / "bench" / "floor_app", app)
    (app / ".gitignore").write_text(".venv/\n*.pyc\n", encoding="utf-8")
    for i in range(50):
        (app / ".venv" / "lib" / f"pkg{i}").mkdir(parents=True)
        (app / ".venv" / "lib" / f"pkg{i}" / "module.py").write_text("x = 1\n", encoding="utf-8")
    (app / ".git").mkdir()
    (app / ".git" / "config").write_text("[core]\n", encoding="utf-8")
    (app / "floor_app" / "stale.pyc").write_bytes(b"\0")

    copy = copy_app(app, tmp_path / "copy")
    assert not (copy / ".venv").exists() and not (copy / ".git").exists()
    assert not (copy / "floor_app" / "stale.pyc").exists()
    assert (copy / "pyproject.toml").is_file() and (copy / ".gitignore").is_file()
    assert build_fab_from_disk(copy) == build_fab_from_disk(app)
