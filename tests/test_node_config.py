"""``fedbuff local --node-config``: every SuperNode's extra node config, with its own partition
id / count substituted and relative paths made absolute, kept in the federation record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedbuff_ops.federation_record import FederationRecord
from fedbuff_ops.launcher import LocalFederation, RunConfigError, node_config_of, parse_run_config, with_node_config
from tests.conftest import ROOT

FEDBUFF = str(Path(sys.executable).with_name("fedbuff"))


@pytest.fixture
def node_files(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for index in range(3):
        (tmp_path / "data" / f"node-{index}-of-3.csv").write_text("x,label\n1,0\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_placeholders_become_each_nodes_own_and_relative_paths_absolute(node_files):
    template = 'data-path="data/node-{partition-id}-of-{num-partitions}.csv" rows=100 tag="n{partition-id}"'
    for index in range(3):
        config = parse_run_config([node_config_of(template, index, 3)])
        assert config == {
            "data-path": str(node_files / "data" / f"node-{index}-of-3.csv"),
            "rows": 100,
            "tag": f"n{index}",  # only path keys are resolved
        }


def test_an_absolute_path_and_a_given_directory_are_kept_as_they_are(node_files, tmp_path):
    absolute = node_files / "data" / "node-1-of-3.csv"
    assert parse_run_config([node_config_of(f'data-path="{absolute}"', 0, 3)])["data-path"] == str(absolute)
    config = node_config_of('csv-file="node-0-of-3.csv"', 0, 3, cwd=node_files / "data")
    assert parse_run_config([config])["csv-file"] == str(node_files / "data" / "node-0-of-3.csv")


@pytest.mark.parametrize(
    ("template", "says"),
    [
        (
            'data-path="data/missing-{partition-id}.csv"',
            r"data-path='data/missing-2\.csv' \(node 2\): .* does not exist",
        ),
        ('data-path="data/node-{partition_id}.csv"', r"unknown placeholder \{partition_id\}"),
        ("data-path=data/x.csv", r"needs double quotes"),
        ("partition-id=4", r"partition-id is set by the launcher"),
        ('device-tier="high"', r"device-tier is set by the launcher"),
    ],
)
def test_a_node_config_that_cannot_work_is_one_line_naming_it(node_files, template, says):
    with pytest.raises(RunConfigError, match=says) as caught:
        node_config_of(template, 2, 3)
    assert str(caught.value).startswith("--node-config: ")
    assert "\n" not in str(caught.value)


def test_the_expanded_node_config_reaches_each_supernode_and_the_federation_record(node_files):
    overrides = with_node_config({1: 'test-fault="nan"'}, 'data-path="data/node-{partition-id}-of-3.csv"', 3)
    federation = LocalFederation(
        app_dir=ROOT, run_dir=node_files / "run", num_nodes=3, tiers=["high"], node_overrides=overrides
    )
    line = federation.node_config(1)
    assert line.startswith('partition-id=1 num-partitions=3 device-tier="high" ')
    assert parse_run_config([line])["data-path"] == str(node_files / "data" / "node-1-of-3.csv")
    assert parse_run_config([line])["test-fault"] == "nan"
    federation.record().write(node_files / "run")
    recorded = FederationRecord.read(node_files / "run")
    assert recorded is not None and dict(recorded.node_overrides) == overrides  # what `fedbuff resume` starts
    assert LocalFederation.of_record(recorded, app_dir=ROOT, run_dir=node_files / "run").node_config(1) == line
    assert with_node_config({0: "a=1"}, "  ", 3) == {0: "a=1"}


def test_the_cli_refuses_a_bad_node_config_before_anything_starts(node_files):
    result = subprocess.run(
        [FEDBUFF, "local", "--app-dir", str(ROOT), "--nodes", "3", "--node-config", 'data-path="nope/{partition-id}"'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"[fedbuff] error: --node-config: data-path='nope/0' (node 0): {node_files / 'nope' / '0'} does not exist"
    ]
    assert "starting flower-superlink" not in result.stdout


def test_virtual_nodes_take_no_node_config(node_files):
    from fedbuff_ops.launcher import LaunchError

    with pytest.raises(LaunchError, match="--node-config needs real SuperNodes"):
        LocalFederation(
            app_dir=ROOT, run_dir=node_files / "run", num_nodes=2, simulation=True, node_overrides={0: "a=1"}
        )
