"""The launcher's look at the app's task before anything starts: the app's own config defaults,
and its task loaded the way Flower loads the app (its folder first on ``sys.path``), so that a
task that cannot work is refused in one line before a SuperLink or SuperNode is started."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fedbuff.settings import RunSettings
from fedbuff.task import Task, TaskError, is_builtin, load_task

Config = Mapping[str, bool | int | float | str]
# the engine's own packages: never dropped, even where the app's folder holds them (this project)
ENGINE_PACKAGES = ("fedbuff", "fedbuff_ops", "server_app", "client_app", "strategies", "mask_service")


def app_defaults(app_dir: Path) -> dict[str, bool | int | float | str]:
    """The run-config values the app declares (``[tool.flwr.app.config]``, flattened as Flower
    does); empty when it has no readable pyproject.toml."""
    from flwr.common.config import flatten_dict

    try:
        with open(app_dir / "pyproject.toml", "rb") as source:
            declared = tomllib.load(source).get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return dict(flatten_dict(declared)) if isinstance(declared, dict) else {}


@contextmanager
def app_on_path(app_dir: Path) -> Iterator[None]:
    """The app's folder first on ``sys.path`` while a task is imported (as Flower's loader does)."""
    folder = str(app_dir.resolve())
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


@contextmanager
def fresh_app_modules(app_dir: Path, reference: str) -> Iterator[None]:
    """Import the task's modules afresh from ``app_dir`` and forget them after, as a process of
    its own would: a process that looks at several apps (a test session; each example's task is
    module ``task``) must never get one app's ``task`` for another's. The task's top-level module
    is set aside while it is imported and put back after; every module first imported from the
    app's folder meanwhile is dropped (the task built from it keeps what it uses)."""
    folder = app_dir.resolve()
    top = reference.partition(":")[0].split(".")[0]

    def of_task(name: str) -> bool:
        return top not in ("", *ENGINE_PACKAGES) and (name == top or name.startswith(f"{top}."))

    set_aside = {name: module for name, module in sys.modules.items() if of_task(name)}
    for name in set_aside:
        del sys.modules[name]
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name not in before]:
            origin = getattr(sys.modules[name], "__file__", None)
            ours = bool(origin) and Path(str(origin)).resolve().is_relative_to(folder)
            if of_task(name) or (ours and name.split(".")[0] not in ENGINE_PACKAGES):
                del sys.modules[name]
        sys.modules.update(set_aside)


def app_task(app_dir: Path, config: Config) -> Task:
    """The task ``config`` names, imported from the app at ``app_dir``; a :class:`TaskError` if it cannot be."""
    reference = str(config.get("task", RunSettings.task))
    if is_builtin(reference):
        return load_task(reference, config)
    with app_on_path(app_dir), fresh_app_modules(app_dir, reference):
        return load_task(reference, config)


def check_task(app_dir: Path, config: Config, settings: RunSettings) -> Task:
    """Load the task and build its model (checked for DP-SGD when ``dp-sgd`` is on): what every
    node would do first, done once here so that a broken task stops before anything starts.

    A built-in task's model is built only for the DP-SGD check (it loads the data set)."""
    task = app_task(app_dir, config)
    if settings.dp_sgd or not is_builtin(settings.task):
        from fedbuff.training import build_model, check_dp_compatible

        model = build_model(task, settings.seed)
        if settings.dp_sgd:
            check_dp_compatible(model)
    return task


__all__ = ["TaskError", "app_defaults", "app_on_path", "app_task", "check_task", "fresh_app_modules"]
