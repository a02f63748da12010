"""A local federation on this machine: one SuperLink, N SuperNodes, one ``flwr run``.

With ``simulation=True`` the SuperLink runs Flower's simulation engine (Ray) instead and
the N SuperNodes are virtual; the ServerApp and ClientApp are the same.

Everything it starts runs in its own process group and is stopped on success, failure,
Ctrl-C or SIGTERM. Flower's state (connections, FABs) lives in a temporary FLWR_HOME.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedbuff.settings import DEVICE_TIERS, RunSettings, SettingsError
from fedbuff.task import Task, TaskError
from fedbuff_ops.app_copy import copy_app
from fedbuff_ops.app_task import app_defaults, app_task, check_task
from fedbuff_ops.federation_record import FederationRecord
from fedbuff_ops.process_tree import descendants
from strategies.registry import spec_of

CONNECTION = "fedbuff-local"
PROJECT_DIR = Path(__file__).resolve().parents[1]  # this project, itself a Flower app
BINARIES = ("flower-superlink", "flower-supernode", "flwr")
READY_TIMEOUT_SECONDS = 60.0
# How often a SuperNode's SuperExec looks for a task to start a ClientApp for (Flower's default:
# 1 s). Measured in bench/update_overhead.py (BENCHMARKS.md); a value already in the
# environment wins.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_SECONDS = "0.25"
# The SuperNodes' SuperExecs start `flwr-clientapp` by name: the launcher puts a lean one first
# on their PATH (fedbuff_ops/lean_clientapp.py: Flower's command without the SuperNode daemon's
# imports, 0.8 s of CPU less per message); "0" in the environment keeps Flower's own.
LEAN_CLIENTAPP_ENV = "FEDBUFF_LEAN_CLIENTAPP"
USAGE_EXIT_CODE = 2  # a command line (or its run config) that cannot work, as argparse exits

# One token of a run config: key=value with a quoted or bare value (the tokens Flower's own
# parser reads), or any other run of non-blanks, which is an error rather than ignored.
_TOKEN = re.compile(r"""(?P<key>[^\s=]+)=(?P<value>'[^']*'|"[^"]*"|\S+)|(?P<other>\S+)""")
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_EXAMPLE = "e.g. -c 'seed=1 server-lr=0.5 user-dp=true strategy=\"fedbuff\"'"
RunConfig = dict[str, bool | int | float | str]


class LaunchError(RuntimeError):
    """The local federation could not be started."""


class RunConfigError(LaunchError):
    """A run config (``-c``) that cannot work: a token that is not ``key=value`` with a TOML
    value, a key given twice, or a value the run settings refuse. One line naming the token
    or key; the command lines exit with :data:`USAGE_EXIT_CODE`."""


def parse_run_config(layers: Sequence[str], what: str = "run config") -> RunConfig:
    """Parse ``-c`` run configs, each a string of ``key=value`` tokens as ``flwr run
    --run-config`` takes them; a later layer overrides an earlier one. Errors start with ``what``.

    Values are TOML: ``123``, ``0.5``, ``true``, ``"a string"`` (or ``'a string'``). Flower's
    own parser answers an unquoted string or a key given twice in one string with a generic
    "invalid format" and ignores a token without ``=``; here each is a :class:`RunConfigError`
    naming the token and how to write it. Strings are never guessed from a bare word: a typo
    in a number or a boolean would silently become a string.
    """
    merged: RunConfig = {}
    for layer in layers:
        seen: dict[str, str] = {}
        for match in _TOKEN.finditer(layer):
            token, key = match.group(0), match.group("key")
            if key is None:
                raise RunConfigError(f"{what}: {token!r} is not key=value ({_EXAMPLE})")
            if not _KEY.fullmatch(key):
                raise RunConfigError(f"{what}: {token!r}: a key is letters, digits, '-' and '_' ({_EXAMPLE})")
            if key in seen:
                raise RunConfigError(
                    f"{what}: {key} is given twice ({seen[key]}, {token}); give each key "
                    "once (a later -c overrides an earlier one)"
                )
            seen[key] = token
            merged[key] = _run_config_value(what, key, match.group("value"))
    return merged


NODE_PLACEHOLDERS = ("{partition-id}", "{num-partitions}")
LAUNCHER_NODE_KEYS = ("partition-id", "num-partitions", "device-tier")  # every node's own, set by the launcher
PATH_KEY = re.compile(r".*(path|-dir|-file)")  # node-config keys whose values are paths


def node_config_of(template: str, index: int, num_nodes: int, cwd: Path | None = None) -> str:
    """Node ``index``'s share of ``--node-config`` (``key=value`` tokens, TOML values):
    ``{partition-id}`` and ``{num-partitions}`` replaced by the node's, and the value of a key
    ending in ``path``, ``-dir`` or ``-file`` made absolute against ``cwd`` (default: the current
    directory; the SuperNodes and their apps run elsewhere). A :class:`RunConfigError` for a
    token that is not ``key=value``, an unknown ``{placeholder}``, a key the launcher sets
    itself, or a path that does not exist on this machine (where the nodes run)."""
    text = template.replace(NODE_PLACEHOLDERS[0], str(index)).replace(NODE_PLACEHOLDERS[1], str(num_nodes))
    if unknown := re.search(r"\{[^{}\s]*\}", text):
        choices = " or ".join(NODE_PLACEHOLDERS)
        raise RunConfigError(f"--node-config: unknown placeholder {unknown.group(0)}; use {choices}")
    config = parse_run_config([text], what="--node-config")
    for key, value in config.items():
        if key in LAUNCHER_NODE_KEYS:
            raise RunConfigError(f"--node-config: {key} is set by the launcher for each node; leave it out")
        if PATH_KEY.fullmatch(key) and isinstance(value, str) and value:
            path = Path(os.path.abspath((cwd or Path.cwd()) / Path(value).expanduser()))
            if not path.exists():
                raise RunConfigError(f"--node-config: {key}={value!r} (node {index}): {path} does not exist")
            config[key] = str(path)
    return format_run_config(config)


def with_node_config(overrides: Mapping[int, str], template: str, num_nodes: int) -> dict[int, str]:
    """``overrides`` (extra node config by node index) with each node's share of ``template``
    (:func:`node_config_of`) in front: what :attr:`LocalFederation.node_overrides` and the
    federation record keep, so that a resume starts the same nodes."""
    if not template.strip():
        return dict(overrides)
    return {
        index: " ".join(filter(None, [node_config_of(template, index, num_nodes), overrides.get(index, "")]))
        for index in range(num_nodes)
    }


def _run_config_value(what: str, key: str, text: str) -> bool | int | float | str:
    """The TOML value of ``key=text``, or a :class:`RunConfigError` saying how to write it."""
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = None
    if isinstance(value, bool | int | float | str):
        return value
    if text[0] in "\"'":
        hint = "the string is not closed; quote a value with blanks as a whole: -c 'key=\"two words\"'"
    elif re.fullmatch(r"[A-Za-z_][^\s\"']*", text):
        hint = (
            f'not a number or true / false; a string value needs double quotes: {key}="{text}" '
            f"(in a shell: -c '{key}=\"{text}\"')"
        )
    else:
        hint = 'the value must be an int, a float, true / false or a "quoted string"'
    raise RunConfigError(f"{what}: {key}={text}: {hint}")


def format_run_config(config: Mapping[str, object]) -> str:
    """``config`` as one ``--run-config`` string that :func:`parse_run_config` (and Flower) read back."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in config.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass(frozen=True)
class LocalFederation:
    """What to start: how many SuperNodes, their tiers, and the run-config overrides."""

    app_dir: Path
    run_dir: Path
    num_nodes: int = 6
    tiers: Sequence[str] = DEVICE_TIERS
    run_config: str = ""
    node_overrides: dict[int, str] = field(default_factory=dict)
    simulation: bool = False
    secagg: bool = False
    log_dir: Path | None = None  # default: <run_dir>/logs

    def __post_init__(self) -> None:
        config = parse_run_config([self.run_config])  # a syntax error, before anything is started
        known = app_config_keys(self.app_dir)
        check_known_keys(config, known, self.app_dir)
        if self.num_nodes < 1:
            raise LaunchError(f"--nodes must be >= 1, got {self.num_nodes}")
        bad = [t for t in self.tiers if t not in (*DEVICE_TIERS, "real")]
        if bad or not self.tiers:
            raise LaunchError(f"unknown device tier(s) {bad}; choose from {(*DEVICE_TIERS, 'real')}")
        if self.secagg and self.simulation:
            raise LaunchError("--secagg needs real SuperNodes (each with its own signing key), not --simulation")
        if self.node_overrides and self.simulation:
            raise LaunchError("--node-config needs real SuperNodes (Flower's virtual nodes take no node config)")
        if {"strategy", "buffer-size", "task"} <= known:  # an app of this engine
            check_buffer_can_fill(run_settings(self.run_config, self.app_dir), self.num_nodes)
            run_task(self.run_config, self.app_dir, check=True)

    @property
    def logs(self) -> Path:
        """Where the SuperLink, SuperNode and ServerApp logs go."""
        return (self.log_dir or self.run_dir / "logs").resolve()

    def tier_of(self, index: int) -> str:
        """Node ``index`` gets tier ``tiers[index % len(tiers)]``."""
        return self.tiers[index % len(self.tiers)]

    def record(self) -> FederationRecord:
        """What a resume of this federation's run must start again (``<run>/federation.json``)."""
        return FederationRecord(
            tuple(self.tier_of(i) for i in range(self.num_nodes)),
            dict(self.node_overrides),
            self.simulation,
            self.secagg,
        )

    @classmethod
    def of_record(cls, record: FederationRecord, **fields: object) -> LocalFederation:
        """The federation ``record`` describes; ``fields`` are the rest (app, run folder, run config)."""
        return cls(
            num_nodes=record.num_nodes,
            tiers=list(record.tiers),
            node_overrides=dict(record.node_overrides),
            simulation=record.simulation,
            secagg=record.secagg,
            **fields,  # type: ignore[arg-type]
        )

    def node_config(self, index: int, extra: str = "") -> str:
        config = f'partition-id={index} num-partitions={self.num_nodes} device-tier="{self.tier_of(index)}"'
        return " ".join(filter(None, [config, extra, self.node_overrides.get(index, "")]))


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys the app at ``app_dir`` declares (``[tool.flwr.app.config]``, flattened
    as the SuperLink checks them); empty if it declares none or has no readable pyproject.toml."""
    return set(app_defaults(app_dir))


def check_known_keys(config: Mapping[str, object], known: set[str], app_dir: Path) -> None:
    """A :class:`RunConfigError` for a key the app (at ``app_dir``, declaring ``known``) does not
    declare (``bufer-size=3``), with the nearest declared key: the SuperLink refuses one too, but
    only once the federation is up."""
    unknown = sorted(set(config) - known) if known else []
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RunConfigError(
            f"run config: unknown key {unknown[0]}{hint}; the app's keys are "
            f"[tool.flwr.app.config] in {app_dir / 'pyproject.toml'}"
        )


def check_buffer_can_fill(settings: RunSettings, num_nodes: int) -> None:
    """A :class:`RunConfigError` when a server step needs more updates than there are nodes: a
    buffer takes one update per client, so with fewer nodes than K it never fills (the run would
    train nothing until max-wall-seconds). A barrier round and Flower's cohort shrink instead."""
    spec = spec_of(settings.strategy)
    if spec.barrier or spec.run_by_flower or settings.flush_size <= num_nodes:
        return
    raise RunConfigError(
        f"buffer-size {settings.buffer_size} needs at least {settings.buffer_size} nodes, got --nodes {num_nodes}: "
        f"a buffer takes one update per client and would never fill; use --nodes {settings.buffer_size} "
        f"or -c 'buffer-size={num_nodes}'"
    )


def full_config(run_config: str, app_dir: Path | None = None) -> RunConfig:
    """The run config a run gets: the app's declared defaults (this project's when ``app_dir``
    is None), then the ``-c`` overrides."""
    return {**app_defaults(app_dir or PROJECT_DIR), **parse_run_config([run_config])}


def run_settings(run_config: str, app_dir: Path | None = None) -> RunSettings:
    """The settings a run of the app at ``app_dir`` with these ``-c`` overrides gets; a
    :class:`RunConfigError` if they cannot work."""
    try:
        return RunSettings.from_run_config(full_config(run_config, app_dir))
    except SettingsError as err:
        raise RunConfigError(f"run config: {err}") from err


def run_task(run_config: str, app_dir: Path | None = None, check: bool = False) -> Task:
    """The run's task, imported from the app as Flower will; with ``check`` its model is built
    (and checked for DP-SGD) too. A task that cannot work is a :class:`RunConfigError`."""
    from fedbuff.datasets import DatasetUnavailable

    config = full_config(run_config, app_dir)
    settings = run_settings(run_config, app_dir)
    try:
        if check:
            return check_task(app_dir or PROJECT_DIR, config, settings)
        return app_task(app_dir or PROJECT_DIR, config)
    except (TaskError, SettingsError) as err:
        raise RunConfigError(f"run config: {err}") from err
    except DatasetUnavailable as err:
        raise LaunchError(str(err)) from err


def task_tiers(num_nodes: int, run_config: str, app_dir: Path | None = None) -> list[str] | None:
    """Each node's device tier where the task ties tiers to its data (a built-in task with
    ``partitioner=tier-correlated``), else None."""
    from fedbuff.datasets import DatasetUnavailable
    from fedbuff.partitioners import PartitionError

    task = run_task(run_config, app_dir)
    try:
        return task.node_tiers(num_nodes)
    except (DatasetUnavailable, PartitionError) as err:
        raise LaunchError(str(err)) from err


def planned_tiers(num_nodes: int, run_config: str, app_dir: Path | None = None) -> list[str]:
    """Each node's device tier as the run assigns them: the task's own where it ties tiers to
    its data, else the ``tier-mix`` quotas (seeded, independent of the data)."""
    import numpy as np

    from fedbuff.partitioners import partition_tiers

    tiers = task_tiers(num_nodes, run_config, app_dir)
    if tiers is not None:
        return tiers
    settings = run_settings(run_config, app_dir)
    return partition_tiers("iid", np.zeros(0), num_nodes, settings.seed, tier_mix=settings.tier_mix)


def find_binary(name: str) -> str:
    """Locate a Flower binary next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{name!r} not found: install flwr==1.41.0 (make run does) or activate .venv")
    return found


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessGroup:
    """Child processes started in their own sessions; :meth:`stop_all` ends every one."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        log = open(log_path, "wb")  # noqa: SIM115 (open while its process runs; stop_all closes it)
        self._logs.append(log)
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        """Names of children that have exited."""
        return [name for name, proc in self._procs if proc.poll() is not None]

    def stop_all(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM every process group and every process below it (Flower's SuperExecs and the
        apps they start run in sessions of their own), then SIGKILL what is left after
        ``grace_seconds``."""
        below = descendants(proc.pid for _, proc in self._procs)
        for _, proc in reversed(self._procs):
            _signal_group(proc, signal.SIGTERM)
        for process in below:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for _, proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while any(p.alive() for p in below) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _, proc in self._procs:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        for process in below:
            process.signal(signal.SIGKILL)
        for log in self._logs:
            log.close()
        self._procs.clear()
        self._logs.clear()


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so that cleanup runs either way (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_superlink(port: int, group: ProcessGroup, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Poll the SuperLink's ``/health`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "superlink" in group.dead():
            raise LaunchError("flower-superlink exited during start-up; see logs/superlink.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise LaunchError(f"flower-superlink did not become healthy within {timeout:.0f}s")


def write_connection(flwr_home: Path, port: int, simulated_nodes: int = 0) -> None:
    """Register the local SuperLink as connection ``fedbuff-local`` in ``FLWR_HOME``.

    ``simulated_nodes > 0`` adds the options a simulation SuperLink needs (one CPU each).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    if simulated_nodes:
        text += f"options.num-supernodes = {simulated_nodes}\noptions.backend.client-resources.num-cpus = 1\n"
    (flwr_home / "config.toml").write_text(text, encoding="utf-8")


@dataclass
class RunningFederation:
    """A started local federation: its processes, environment and the SuperLink's port."""

    federation: LocalFederation
    group: ProcessGroup
    env: dict[str, str]
    binaries: dict[str, str]
    port: int
    overrides: list[str] = field(default_factory=list)  # what the run must know (mask service address)
    supernodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    app_copy: Path | None = None  # what `flwr run` builds the FAB from (fedbuff_ops.app_copy)

    def run_argv(self, run_config: str = "") -> list[str]:
        """``flwr run`` of the app against this federation: the run folder and the launcher's
        overrides, the federation's ``run_config``, then ``run_config``. Each is its own
        ``--run-config`` (a key may appear once in each): a later one wins."""
        layers = [
            " ".join([f'run-dir="{self.federation.run_dir.resolve()}"', *self.overrides]),
            self.federation.run_config,
            run_config,
        ]
        return [
            self.binaries["flwr"],
            "run",
            str(self.app_copy or self.federation.app_dir),
            CONNECTION,
            "--stream",
            *(arg for layer in layers if layer for arg in ("--run-config", layer)),
        ]


def lean_clientapp_dir(parent: Path) -> list[str]:
    """A folder holding a ``flwr-clientapp`` that runs :mod:`fedbuff_ops.lean_clientapp` with this
    interpreter (``[]`` when ``FEDBUFF_LEAN_CLIENTAPP=0``): put first on the SuperNodes' PATH."""
    if os.environ.get(LEAN_CLIENTAPP_ENV, "1") == "0":
        return []
    folder = parent / "lean-bin"
    folder.mkdir(exist_ok=True)
    _write_command(folder / "flwr-clientapp", "fedbuff_ops.lean_clientapp")
    # the simulation engine's message sweep (fedbuff_ops/simulation_engine.py; the SuperLink
    # finds flwr-simulation on the same PATH)
    _write_command(folder / "flwr-simulation", "fedbuff_ops.simulation_engine")
    return [str(folder)]


def _write_command(path: Path, module: str) -> None:
    path.write_text(f"#!{sys.executable}\nfrom {module} import main\n\nmain()\n", encoding="utf-8")
    path.chmod(0o755)


@contextmanager
def start_federation(federation: LocalFederation, out: IO[str] = sys.stdout) -> Iterator[RunningFederation]:
    """Start the SuperLink, the mask service (``secagg``) and the SuperNodes; stop them all on exit.

    Flower's state lives in a temporary FLWR_HOME that goes with the federation. The run folder
    gets ``federation.json`` (:mod:`fedbuff_ops.federation_record`), what a resume starts again.
    """
    binaries = {name: find_binary(name) for name in BINARIES}
    logs = federation.logs
    logs.mkdir(parents=True, exist_ok=True)
    federation.record().write(federation.run_dir)
    group = ProcessGroup()
    with tempfile.TemporaryDirectory(prefix="fedbuff-flwr-home-") as home, _sigterm_as_interrupt():
        # The SuperLink and SuperNodes spawn flower-superexec by name: it must be on PATH.
        bin_dirs = os.pathsep.join(
            dict.fromkeys([*lean_clientapp_dir(Path(home)), *(str(Path(b).parent) for b in binaries.values())])
        )
        env = {
            SUPEREXEC_POLL_ENV: SUPEREXEC_POLL_SECONDS,
            **os.environ,
            "FLWR_HOME": home,
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join(filter(None, [bin_dirs, os.environ.get("PATH", "")])),
        }
        try:
            port = free_port()
            mode = "simulation " if federation.simulation else ""
            _say(out, f"starting flower-superlink ({mode}on 127.0.0.1:{port})")
            group.start(
                "superlink",
                [
                    binaries["flower-superlink"],
                    "--insecure",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                    *(["--simulation"] if federation.simulation else []),
                ],
                env,
                logs / "superlink.log",
            )
            wait_for_superlink(port, group)
            running = RunningFederation(federation, group, env, binaries, port)
            running.app_copy = copy_app(federation.app_dir, Path(home) / "app")
            node_extras = [""] * federation.num_nodes
            if federation.secagg:
                address, node_extras = _start_mask_service(federation, env, logs, group, out)
                running.overrides.append(f'secagg=true secagg-address="{address}"')
            if federation.simulation:
                _say(out, f"{federation.num_nodes} virtual SuperNodes in Flower's simulation engine")
            else:
                running.supernodes = _start_supernodes(
                    federation, binaries["flower-supernode"], port, env, logs, group, out, node_extras
                )
            write_connection(Path(home), port, federation.num_nodes if federation.simulation else 0)
            yield running
        finally:
            _say(out, "stopping the local federation")
            group.stop_all()


def run_local(federation: LocalFederation, out: IO[str] = sys.stdout) -> dict[str, object]:
    """Start the federation, run the app to completion, return the run summary."""
    with start_federation(federation, out) as running:
        argv = running.run_argv()
        _say(out, "submitting: " + shlex.join(argv[1:]))
        returncode = _stream(argv, running.env, out, federation.logs / "serverapp.log")
        summary_path = federation.run_dir / "summary.json"
        if not summary_path.exists():
            raise LaunchError(
                f"the run ended without a summary (flwr run exit code {returncode}); "
                f"see {federation.logs}/serverapp.log and {federation.logs}/superlink.log"
            )
        return json.loads(summary_path.read_text(encoding="utf-8"))


def resume_config(run_dir: Path, overrides: Sequence[str] = (), launcher_owned: Sequence[str] = ()) -> str:
    """The run config that continues ``run_dir``: its own settings, then ``overrides``
    (``key=value`` strings, e.g. a higher ``max-server-steps``), then ``resume-from``.

    ``launcher_owned`` keys are left out: the new federation sets them itself (the address of
    its own mask service under secure aggregation), and a stale value would win over it."""
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LaunchError(f"{run_dir} is not a run folder ({config_path}: {err})") from err
    config.update(parse_run_config(overrides, what="run-config overrides"))
    config = {k: v for k, v in config.items() if k not in ("run-dir", "resume-from", *launcher_owned)}
    config["resume-from"] = str(run_dir.resolve())
    return format_run_config(config)


def _start_supernodes(
    federation: LocalFederation,
    binary: str,
    superlink_port: int,
    env: dict[str, str],
    logs: Path,
    group: ProcessGroup,
    out: IO[str],
    node_extras: Sequence[str],
) -> list[subprocess.Popen[bytes]]:
    nodes = [
        group.start(
            f"supernode-{index}",
            [
                binary,
                "--insecure",
                "--superlink",
                f"127.0.0.1:{superlink_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                federation.node_config(index, node_extras[index]),
            ],
            env,
            logs / f"supernode-{index}.log",
        )
        for index in range(federation.num_nodes)
    ]
    tiers = ", ".join(federation.tier_of(i) for i in range(federation.num_nodes))
    _say(out, f"started {federation.num_nodes} flower-supernode processes (tiers: {tiers})")
    return nodes


def _start_mask_service(
    federation: LocalFederation, env: dict[str, str], logs: Path, group: ProcessGroup, out: IO[str]
) -> tuple[str, list[str]]:
    """Node keys, the mask service, and each node's secure-aggregation node config.

    Keys live in ``<run>/secagg`` (a run folder is never committed); every node's public
    key is registered with the service, and every node pins the service's fingerprint.
    """
    from fedbuff_ops.node_keys import write_node_key

    secagg_dir = federation.run_dir.resolve() / "secagg"
    registered = secagg_dir / "registered"
    registered.mkdir(parents=True, exist_ok=True)
    signing_keys = []
    for index in range(federation.num_nodes):
        private, public = write_node_key(secagg_dir / "nodes", f"node-{index}")
        shutil.copy(public, registered / public.name)
        signing_keys.append(private)
    service = [sys.executable, "-m", "mask_service", "--state-dir", str(secagg_dir / "service")]
    printed = subprocess.run([*service, "--print-fingerprint"], env=env, capture_output=True, text=True, timeout=60)
    fingerprint = dict(line.split("=", 1) for line in printed.stdout.split() if "=" in line).get("fingerprint")
    if printed.returncode != 0 or not fingerprint:
        raise LaunchError(f"the mask service could not create its key: {printed.stderr.strip()[-500:]}")
    address = f"127.0.0.1:{free_port()}"
    group.start(
        "mask-service",
        [*service, "--registered-keys", str(registered), "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]],
        env,
        logs / "mask-service.log",
    )
    _say(out, f"started the mask service on {address} (fingerprint {fingerprint[:16]}…)")
    extras = [f'secagg-signing-key="{key}" secagg-service-fingerprint="{fingerprint}"' for key in signing_keys]
    return address, extras


def _stream(argv: list[str], env: dict[str, str], out: IO[str], log_path: Path) -> int:
    """Run ``flwr run --stream``, echoing its output to ``out`` and to ``log_path``."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                log.write(line)
            return proc.wait()
        finally:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _say(out: IO[str], text: str) -> None:
    out.write(f"[fedbuff] {text}\n")
    out.flush()
