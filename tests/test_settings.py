"""Run settings: pyproject defaults, types, and start-up errors that name the key."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedbuff.builtin_tasks import BundledOptions
from fedbuff.settings import RunSettings, SettingsError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pyproject_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def builtin_task_knobs() -> dict[str, object]:
    """The built-in tasks' own knobs with their defaults (the task's name, seed and tier mix are the run's)."""
    return {
        field.name.replace("_", "-"): field.default
        for field in dataclasses.fields(BundledOptions)
        if field.name not in ("dataset", "seed", "tier_mix")
    }


def test_every_setting_is_a_pyproject_knob_with_the_same_default():
    """The engine's knobs and the built-in tasks' knobs, apart, make up the app's config."""
    engine, task = RunSettings().as_dict(), builtin_task_knobs()
    assert not set(engine) & set(task)
    assert {**engine, **task} == pyproject_config()


def test_pyproject_defaults_parse():
    assert RunSettings.from_run_config(pyproject_config()) == RunSettings()
    assert BundledOptions.from_run_config("digits", pyproject_config()) == BundledOptions()


def test_overrides_are_typed_and_ints_widen_to_floats():
    settings = RunSettings.from_run_config({"buffer-size": 5, "server-lr": 2, "run-dir": "x"})
    assert (settings.buffer_size, settings.server_lr, settings.run_dir) == (5, 2.0, "x")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"buffer-size": 0}, "buffer-size must be >= 1"),
        ({"concurrency": "many"}, "concurrency must be int, got .many."),
        ({"client-lr": -0.1}, "client-lr must be > 0"),
        ({"staleness-weight": "nope"}, "staleness-weight must be one of"),
        ({"task": "no such task"}, "task must be a built-in task"),
        ({"tier-speed-ratios": "high=1,mid=0.5,low=9"}, "tier-speed-ratios"),
        ({"tier-speed-ratios": "high=1,mid=3"}, r"no ratio for tier\(s\) \['low'\]"),
        ({"target-accuracy": 2.0}, r"target-accuracy must be in \[0, 1\]"),
        ({"max-wall-seconds": float("nan")}, "max-wall-seconds must be > 0"),
        ({"max-update-bytes": -1}, "max-update-bytes must be >= 0"),
        ({"error-backoff-seconds": -1.0}, "error-backoff-seconds must be >= 0"),
        (
            {"error-backoff-seconds": 10.0, "error-backoff-max-seconds": 5.0},
            "error-backoff-max-seconds must be >= error-backoff-seconds",
        ),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_key(config, message):
    with pytest.raises(SettingsError, match=message):
        RunSettings.from_run_config(config)
