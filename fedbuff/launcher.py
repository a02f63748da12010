"""A local federation on this machine: one SuperLink, N SuperNodes, one ``flwr run``.

With ``simulation=True`` the SuperLink runs Flower's simulation engine (Ray) instead and
the N SuperNodes are virtual; the ServerApp and ClientApp are the same.

Everything it starts runs in its own process group and is stopped on success, failure,
Ctrl-C or SIGTERM. Flower's state (connections, FABs) lives in a temporary FLWR_HOME.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from click import ClickException
from flwr.common.config import parse_config_args

from fedbuff.settings import DEVICE_TIERS, RunSettings, SettingsError

CONNECTION = "fedbuff-local"
BINARIES = ("flower-superlink", "flower-supernode", "flwr")
READY_TIMEOUT_SECONDS = 60.0


class LaunchError(RuntimeError):
    """The local federation could not be started."""


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
        if self.num_nodes < 1:
            raise LaunchError(f"--nodes must be >= 1, got {self.num_nodes}")
        bad = [t for t in self.tiers if t not in (*DEVICE_TIERS, "real")]
        if bad or not self.tiers:
            raise LaunchError(f"unknown device tier(s) {bad}; choose from {(*DEVICE_TIERS, 'real')}")
        if self.secagg and self.simulation:
            raise LaunchError("--secagg needs real SuperNodes (each with its own signing key), not --simulation")

    @property
    def logs(self) -> Path:
        """Where the SuperLink, SuperNode and ServerApp logs go."""
        return (self.log_dir or self.run_dir / "logs").resolve()

    def tier_of(self, index: int) -> str:
        """Node ``index`` gets tier ``tiers[index % len(tiers)]``."""
        return self.tiers[index % len(self.tiers)]

    def node_config(self, index: int, extra: str = "") -> str:
        config = (
            f'partition-id={index} num-partitions={self.num_nodes} device-tier="{self.tier_of(index)}"'
        )
        return " ".join(filter(None, [config, extra, self.node_overrides.get(index, "")]))


def run_settings(run_config: str) -> RunSettings:
    """The settings a run with these ``-c`` overrides gets (pyproject defaults equal
    ``RunSettings()``'s, a test keeps them so)."""
    from flwr.common.config import parse_config_args

    try:
        return RunSettings.from_run_config(parse_config_args([run_config]) if run_config.strip() else {})
    except (SettingsError, ValueError) as err:
        raise LaunchError(f"run config: {err}") from err


def planned_tiers(num_nodes: int, run_config: str) -> list[str]:
    """Each node's device tier as the run's settings assign them: the ``tier-mix`` quotas,
    tied to each node's labels under ``partitioner=tier-correlated`` (``fedbuff.run_data``)."""
    from fedbuff import run_data
    from fedbuff.datasets import DatasetUnavailable
    from fedbuff.partitioners import PartitionError

    try:
        return run_data.client_tiers(run_settings(run_config), num_nodes)
    except (DatasetUnavailable, PartitionError) as err:
        raise LaunchError(str(err)) from err


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
        log = open(log_path, "wb")
        self._logs.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        """Names of children that have exited."""
        return [name for name, proc in self._procs if proc.poll() is not None]

    def stop_all(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``grace_seconds``."""
        for _, proc in reversed(self._procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for _, proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self._procs:
            _signal_group(proc, signal.SIGKILL)  # grandchildren (superexec, apps) too
            proc.wait()
        for log in self._logs:
            log.close()
        self._procs.clear()
        self._logs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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
        text += (
            f"options.num-supernodes = {simulated_nodes}\n"
            "options.backend.client-resources.num-cpus = 1\n"
        )
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

    def run_argv(self, run_config: str = "") -> list[str]:
        """``flwr run`` of the app against this federation: the run folder and the launcher's
        overrides, the federation's ``run_config``, then ``run_config``. Each is its own
        ``--run-config`` (a key may appear once in each): a later one wins."""
        layers = [" ".join([f'run-dir="{self.federation.run_dir.resolve()}"', *self.overrides]),
                  self.federation.run_config, run_config]
        return [self.binaries["flwr"], "run", str(self.federation.app_dir), CONNECTION, "--stream",
                *(arg for layer in layers if layer for arg in ("--run-config", layer))]


@contextmanager
def start_federation(federation: LocalFederation, out: IO[str] = sys.stdout) -> Iterator[RunningFederation]:
    """Start the SuperLink, the mask service (``secagg``) and the SuperNodes; stop them all on exit.

    Flower's state lives in a temporary FLWR_HOME that goes with the federation.
    """
    binaries = {name: find_binary(name) for name in BINARIES}
    logs = federation.logs
    logs.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup()
    with tempfile.TemporaryDirectory(prefix="fedbuff-flwr-home-") as home, _sigterm_as_interrupt():
        # The SuperLink and SuperNodes spawn flower-superexec by name: it must be on PATH.
        bin_dirs = os.pathsep.join(dict.fromkeys(str(Path(b).parent) for b in binaries.values()))
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
               "PATH": os.pathsep.join(filter(None, [bin_dirs, os.environ.get("PATH", "")]))}
        try:
            port = free_port()
            mode = "simulation " if federation.simulation else ""
            _say(out, f"starting flower-superlink ({mode}on 127.0.0.1:{port})")
            group.start("superlink", [
                binaries["flower-superlink"], "--insecure", "--host", "127.0.0.1", "--port", str(port),
                "--disable-runtime-dependency-installation",
                *(["--simulation"] if federation.simulation else []),
            ], env, logs / "superlink.log")
            wait_for_superlink(port, group)
            running = RunningFederation(federation, group, env, binaries, port)
            node_extras = [""] * federation.num_nodes
            if federation.secagg:
                address, node_extras = _start_mask_service(federation, env, logs, group, out)
                running.overrides.append(f'secagg=true secagg-address="{address}"')
            if federation.simulation:
                _say(out, f"{federation.num_nodes} virtual SuperNodes in Flower's simulation engine")
            else:
                running.supernodes = _start_supernodes(federation, binaries["flower-supernode"], port, env,
                                                       logs, group, out, node_extras)
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


def resume_config(run_dir: Path, overrides: Sequence[str] = ()) -> str:
    """The run config that continues ``run_dir``: its own settings, then ``overrides``
    (``key=value`` strings, e.g. a higher ``max-server-steps``), then ``resume-from``."""
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LaunchError(f"{run_dir} is not a run folder ({config_path}: {err})") from err
    try:
        config.update(parse_config_args(list(overrides)))
    except (ClickException, ValueError) as err:  # Flower's parser reports bad syntax through click
        raise LaunchError(f"run-config overrides {list(overrides)}: {err}") from err
    config = {k: v for k, v in config.items() if k not in ("run-dir", "resume-from")}
    config["resume-from"] = str(run_dir.resolve())
    return " ".join(f"{key}={_toml_value(value)}" for key, value in config.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _start_supernodes(federation: LocalFederation, binary: str, superlink_port: int,
                      env: dict[str, str], logs: Path, group: ProcessGroup, out: IO[str],
                      node_extras: Sequence[str]) -> list[subprocess.Popen[bytes]]:
    nodes = [
        group.start(f"supernode-{index}", [
            binary, "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
            "--host", "127.0.0.1", "--port", str(free_port()),
            "--node-config", federation.node_config(index, node_extras[index]),
        ], env, logs / f"supernode-{index}.log")
        for index in range(federation.num_nodes)
    ]
    tiers = ", ".join(federation.tier_of(i) for i in range(federation.num_nodes))
    _say(out, f"started {federation.num_nodes} flower-supernode processes (tiers: {tiers})")
    return nodes


def _start_mask_service(federation: LocalFederation, env: dict[str, str], logs: Path,
                        group: ProcessGroup, out: IO[str]) -> tuple[str, list[str]]:
    """Node keys, the mask service, and each node's secure-aggregation node config.

    Keys live in ``<run>/secagg`` (a run folder is never committed); every node's public
    key is registered with the service, and every node pins the service's fingerprint.
    """
    from fedbuff.node_keys import write_node_key

    secagg_dir = federation.run_dir.resolve() / "secagg"
    registered = secagg_dir / "registered"
    registered.mkdir(parents=True, exist_ok=True)
    signing_keys = []
    for index in range(federation.num_nodes):
        private, public = write_node_key(secagg_dir / "nodes", f"node-{index}")
        shutil.copy(public, registered / public.name)
        signing_keys.append(private)
    service = [sys.executable, "-m", "mask_service", "--state-dir", str(secagg_dir / "service")]
    printed = subprocess.run([*service, "--print-fingerprint"], env=env, capture_output=True, text=True,
                             timeout=60)
    fingerprint = dict(line.split("=", 1) for line in printed.stdout.split() if "=" in line).get("fingerprint")
    if printed.returncode != 0 or not fingerprint:
        raise LaunchError(f"the mask service could not create its key: {printed.stderr.strip()[-500:]}")
    address = f"127.0.0.1:{free_port()}"
    group.start("mask-service", [*service, "--registered-keys", str(registered), "--host", "127.0.0.1",
                                 "--port", address.rsplit(":", 1)[1]], env, logs / "mask-service.log")
    _say(out, f"started the mask service on {address} (fingerprint {fingerprint[:16]}…)")
    extras = [f'secagg-signing-key="{key}" secagg-service-fingerprint="{fingerprint}"' for key in signing_keys]
    return address, extras


def _stream(argv: list[str], env: dict[str, str], out: IO[str], log_path: Path) -> int:
    """Run ``flwr run --stream``, echoing its output to ``out`` and to ``log_path``."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
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
