"""A run config that cannot work ends every command line with one line naming the token and
how to write it, exit code 2, no traceback, before anything is started.

The command lines run with ``--nodes 0``: if a check ever let a bad config through, the
launcher would refuse the federation (exit 1, the test fails) instead of starting one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import privacy_tradeoff, time_to_accuracy
from fedbuff.settings import RunSettings
from fedbuff_ops.launcher import RunConfigError, format_run_config, parse_run_config, resume_config

FEDBUFF = str(Path(sys.executable).with_name("fedbuff"))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["strategy=fedbuf"], r"^run config: strategy=fedbuf: .*needs double quotes: strategy=\"fedbuf\""),
        (["seed=1 seed=2"], r"^run config: seed is given twice \(seed=1, seed=2\); give each key once"),
        (["seed=1 buffer-size"], r"^run config: 'buffer-size' is not key=value \(e\.g\. "),
        (["=3"], r"^run config: '=3' is not key=value"),
        (["a.b=1"], r"^run config: 'a\.b=1': a key is letters, digits"),
        (['run-dir="a b'], r"^run config: run-dir=\"a: the string is not closed"),
        (["seed=[1,2]"], r"^run config: seed=\[1,2\]: the value must be an int, a float, true / false or a"),
        (["seed=1x"], r"^run config: seed=1x: the value must be"),
    ],
)
def test_each_bad_token_is_named_with_how_to_write_it(layers, message):
    with pytest.raises(RunConfigError, match=message) as caught:
        parse_run_config(layers)
    assert "\n" not in str(caught.value)


def test_valid_configs_parse_as_flower_does_and_a_later_layer_wins():
    config = parse_run_config(["strategy=\"sync\" seed=3 server-lr=5e-1 user-dp=true run-dir='a b'", "seed=4"])
    assert config == {"strategy": "sync", "seed": 4, "server-lr": 0.5, "user-dp": True, "run-dir": "a b"}
    assert parse_run_config([format_run_config(config)]) == config
    assert parse_run_config(["", "  "]) == {}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDBUFF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("[fedbuff] error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("strategy=fedbuf", ["strategy=fedbuf", 'strategy="fedbuf"']),
        ("seed=1 seed=2", ["seed is given twice (seed=1, seed=2)"]),
        ("buffer-size=0", ["buffer-size must be >= 1, got 0"]),
        ("bufer-size=3", ["unknown key bufer-size (did you mean buffer-size?)", "[tool.flwr.app.config]"]),
        ("seed=1 no-such-knob=true", ["unknown key no-such-knob;"]),
    ],
)
def test_fedbuff_local(tmp_path, override, fragments):
    assert_usage_error(run_cli("local", "--nodes", "0", "-c", override, cwd=tmp_path), *fragments)
    assert not (tmp_path / "runs").exists()


def test_fedbuff_local_refuses_a_buffer_that_its_nodes_could_never_fill(tmp_path):
    """Each buffer takes one update per client: two nodes never fill K = 3 (it trained nothing)."""
    result = run_cli("local", "--nodes", "2", cwd=tmp_path)
    assert_usage_error(result, "buffer-size 3 needs at least 3 nodes, got --nodes 2", "-c 'buffer-size=2'")
    assert not (tmp_path / "runs").exists()


def test_fedbuff_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RunSettings().as_dict()))
    result = run_cli("resume", str(tmp_path), "--nodes", "0", "-c", "seed=1 seed=2", cwd=tmp_path)
    assert_usage_error(result, "run-config overrides: seed is given twice")
    with pytest.raises(RunConfigError, match="run-config overrides: strategy=fedbuf"):
        resume_config(tmp_path, ["strategy=fedbuf"])


def test_fedbuff_fairness(tmp_path):
    result = run_cli(
        "fairness", "--nodes", "0", "--runs-dir", str(tmp_path / "runs"), "-c", "strategy=fedbuf", cwd=tmp_path
    )
    assert_usage_error(result, 'strategy="fedbuf"')


def refuse_to_run(*args, **kwargs):
    raise AssertionError("a federation was started with a bad run config")


def test_bench_checks_every_run_config_before_the_first_run(monkeypatch, capsys):
    monkeypatch.setattr(time_to_accuracy, "run", refuse_to_run)
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy", "--quick", "--strategies", "fedbuff,fedbuf"])
    with pytest.raises(SystemExit) as caught:
        time_to_accuracy.main()
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "[bench] error: run config: strategy must be one of ('fedbuff', 'fedasync', 'sync', "
        "'fedcompass', 'flower-fedavg'), got 'fedbuf'"
    ]


def test_bench_privacy_tradeoff_checks_its_points_first(monkeypatch, capsys):
    monkeypatch.setattr(privacy_tradeoff, "run_local", refuse_to_run)
    monkeypatch.setattr(sys, "argv", ["privacy_tradeoff", "--sigmas", "1", "--clip", "0"])
    with pytest.raises(SystemExit) as caught:
        privacy_tradeoff.main()
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "[bench] error: run config: user-dp-clip must be a finite number > 0, got 0.0"
    ]
