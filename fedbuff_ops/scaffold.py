"""``fedbuff new NAME``: a new Flower app whose task is the user's, trained by this engine.

The app holds only what is the user's: ``task.py`` (a small CNN and a loader of each node's own
file), ``make_data.py`` (synthetic per-node files, so it trains out of the box), a README and a
``pyproject.toml`` naming this engine's ServerApp and ClientApp as its components, with every
engine knob in ``[tool.flwr.app.config]``. The engine itself is a dependency, installed beside
Flower, never copied. The files are in ``fedbuff_ops/templates/app/`` (real files, linted with
the project); ``{{name}}`` in them is the app's name.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fedbuff.settings import RunSettings
from fedbuff_ops.launcher import PROJECT_DIR, LaunchError, _toml_value

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "app"
# template file -> the app's file
FILES = {"task.py": "task.py", "make_data.py": "make_data.py", "README.md": "README.md", "gitignore": ".gitignore"}
# Flower's rule for an app name ([project].name): a letter, then letters, digits and hyphens
APP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")

# Engine knobs whose defaults suit a first run of a new app better than the engine's own
# (a CNN wants a smaller learning rate than the built-in MLP; three nodes, not six).
APP_DEFAULTS: dict[str, bool | int | float | str] = {
    "task": "task:Task",
    "max-server-steps": 20,
    "concurrency": 3,
    "buffer-size": 2,
    "client-lr": 0.05,
}
# The template task's own knobs: (key, default, comment).
TASK_KNOBS: tuple[tuple[str, bool | int | float | str, str], ...] = (
    ("holdout-fraction", 0.2, "the share of each node's file kept as its held-out split"),
    ("server-test-path", "", 'a file the server may evaluate on (a research run); "": the server holds no data'),
)

DESCRIPTION = "A federated task trained asynchronously (FedBuff) by fedbuff-deploy"
PYPROJECT = """\
# A Flower app: `flwr run . <connection>` submits it, `fedbuff local --app-dir .` runs it on a
# local federation. Its ServerApp and ClientApp are fedbuff-deploy's; its task is task.py.

[project]
name = "{{name}}"
version = "1.0.0"
description = "{{description}}"
license = "Apache-2.0"
dependencies = [
    # the engine: installed beside Flower on the SuperLink's machine and every node, not copied
    "fedbuff-deploy",
]

[tool.flwr.app]
publisher = "{{name}}"
# what the FAB ships: the app's code and docs; data files never leave the nodes
fab-include = ["*.py", "*.md"]

[tool.flwr.app.components]
serverapp = "server_app.app:app"
clientapp = "client_app.app:app"

# Every knob of a run, with its default. Override with `-c 'key=value'` (fedbuff local,
# flwr run); fedbuff-deploy's README explains each engine knob.
[tool.flwr.app.config]
{{config}}
"""


class ScaffoldError(LaunchError):
    """The app cannot be written (a bad name, or a folder that is not empty); one line."""


def new_app(name: str, parent: Path = Path()) -> Path:
    """Write the app ``name`` into ``parent/name``; a :class:`ScaffoldError` when the name is not
    a Flower app name or the folder exists and is not empty. Returns the app's folder."""
    if not APP_NAME.fullmatch(name):
        raise ScaffoldError(
            f"app name {name!r}: a letter, then letters, digits and '-' (Flower's rule for [project].name)"
        )
    app = parent / name
    if app.exists() and (not app.is_dir() or any(app.iterdir())):
        raise ScaffoldError(f"{app} already exists and is not empty; choose another NAME or --dir")
    app.mkdir(parents=True, exist_ok=True)
    for source, target in FILES.items():
        text = (TEMPLATE_DIR / source).read_text(encoding="utf-8")
        (app / target).write_text(text.replace("{{name}}", name), encoding="utf-8")
    (app / "pyproject.toml").write_text(pyproject(name), encoding="utf-8")
    return app


def pyproject(
    name: str,
    defaults: Mapping[str, bool | int | float | str] = APP_DEFAULTS,
    task_knobs: Sequence[tuple[str, bool | int | float | str, str]] = TASK_KNOBS,
    description: str = DESCRIPTION,
) -> str:
    """The app's ``pyproject.toml``: its components and every engine knob (``defaults`` where
    given), then the task's own knobs ``(key, default, comment)``. The examples' pyprojects
    (examples/*/pyproject.toml) were written with it too."""
    config = [*engine_config_lines(defaults), "# the task's own knobs (task.py reads them from self.config)"]
    config += [f"{key} = {_toml_value(value)}  # {comment}" for key, value, comment in task_knobs]
    text = PYPROJECT.replace("{{name}}", name).replace("{{description}}", description)
    return text.replace("{{config}}", "\n".join(config))


def engine_config_lines(defaults: Mapping[str, bool | int | float | str] = APP_DEFAULTS) -> list[str]:
    """``key = value`` lines for every engine knob (:class:`RunSettings`), with :data:`APP_DEFAULTS`
    applied: in the order and under the comments of this project's own ``[tool.flwr.app.config]``
    where that file is at hand (a source checkout), else in the settings' order. The built-in
    tasks' knobs (``hidden-units``, ``partitioner``, …) are not the engine's and stay out."""
    knobs = {**RunSettings().as_dict(), **defaults}
    lines: list[str] = []
    written: set[str] = set()
    comments: list[str] = []
    for line in _project_config_lines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        key = stripped.split("=", 1)[0].strip()
        if key in knobs and key not in written:
            lines += comments
            lines.append(_knob_line(key, knobs[key], defaults))
            written.add(key)
        comments = []  # a comment heads the keys below it: it goes where they go
    rest = [key for key in knobs if key not in written]
    if rest:
        lines.append("# engine knobs" if not lines else "# more engine knobs")
        lines += [_knob_line(key, knobs[key], defaults) for key in rest]
    return lines


def _knob_line(key: str, value: object, defaults: Mapping[str, object]) -> str:
    line = f"{key} = {_toml_value(value)}"
    if key in defaults and key != "task":
        line += f"  # engine default {_toml_value(getattr(RunSettings(), key.replace('-', '_')))}"
    return line


def _project_config_lines() -> Iterator[str]:
    """The lines of this project's ``[tool.flwr.app.config]`` (none when the engine is installed
    without its source checkout: the settings' own order is used then)."""
    path = PROJECT_DIR / "pyproject.toml"
    try:
        text = path.read_text(encoding="utf-8")
        if tomllib.loads(text).get("project", {}).get("name") != "fedbuff-deploy":
            return
    except (OSError, tomllib.TOMLDecodeError):
        return
    inside = False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line.strip() == "[tool.flwr.app.config]"
            continue
        if inside and line.strip():
            yield line
