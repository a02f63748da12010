"""The launcher's run-config handling: layered overrides and the config that resumes a run."""

from __future__ import annotations

import json

import pytest
from flwr.common.config import parse_config_args

from fedbuff.launcher import LaunchError, LocalFederation, ProcessGroup, RunningFederation, resume_config
from fedbuff.settings import RunSettings
from tests.conftest import ROOT


def run_configs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--run-config"]


def test_each_override_layer_is_its_own_run_config_and_the_later_one_wins(tmp_path):
    federation = LocalFederation(app_dir=ROOT, run_dir=tmp_path / "run", run_config="max-server-steps=40")
    running = RunningFederation(federation, ProcessGroup(), env={}, binaries={"flwr": "flwr"}, port=1,
                                overrides=['secagg-address="127.0.0.1:9"'])
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
