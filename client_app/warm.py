"""The ClientApp's side of the warm trainer: find the node's trainer, start it if needed, hand
it the task, and give Flower back the reply and the context state.

A trainer is keyed by what must never be mixed: the node id, the run id and the installed app
(Flower installs each FAB in a directory named by its hash; for a task of the user's app, the
folder its module is imported from), so a new run or new code always
gets a new trainer and two SuperNodes on one host never share one. Its Unix socket lives in a
directory only this user can enter (:func:`trainer_directory`). A per-node lock, held from
connect to reply, makes one ClientApp at a time start or use the trainer and keeps an idle
trainer from leaving while a task is on its way.

Imports stay lean (stdlib, Flower, :mod:`client_app.trainer_protocol`): this runs in Flower's
per-message ClientApp process, which is what the trainer exists to keep small.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, RecordDict

from client_app import trainer_protocol as protocol

log = logging.getLogger(__name__)

TRAINER_DIR_ENV = "FEDBUFF_TRAINER_DIR"
START_TIMEOUT_SECONDS = 120.0  # torch's import on a slow device, the partition is loaded later
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 104-108 bytes, by OS
FLOWER_CLIENTAPP_MODULE = "flwr.supernode.runtime.run_clientapp"
PF_EXITING = 0x4  # include/linux/sched.h: the process has begun to exit


class TrainerError(RuntimeError):
    """The node's trainer could not train this task; the ClientApp fails with this message."""


def in_flower_clientapp_process() -> bool:
    """True inside Flower's per-message ``flwr-clientapp`` process, the only place where a warm
    trainer saves anything (the simulation engine already reuses its ClientApp processes)."""
    return FLOWER_CLIENTAPP_MODULE in sys.modules


def trainer_directory(environ: Mapping[str, str] = os.environ) -> Path:
    """The private directory of this user's trainer sockets, created 0700 and checked to be so.

    ``FEDBUFF_TRAINER_DIR`` if set, else ``$XDG_RUNTIME_DIR/fedbuff-trainers``, else
    ``<tmp>/fedbuff-trainers-<uid>``. A directory another user could enter is refused, never used.
    """
    uid = os.geteuid()
    if configured := environ.get(TRAINER_DIR_ENV):
        directory = Path(configured)
    elif runtime := environ.get("XDG_RUNTIME_DIR"):
        directory = Path(runtime) / "fedbuff-trainers"
    else:
        directory = Path(tempfile.gettempdir()) / f"fedbuff-trainers-{uid}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as err:
        raise TrainerError(f"cannot create the trainer directory {directory}: {err}") from err
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise TrainerError(
            f"the trainer directory {directory} must be a directory of uid {uid} with mode 0700 "
            f"(it is uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); remove it or set "
            f"{TRAINER_DIR_ENV}"
        )
    return directory


@dataclass(frozen=True)
class TrainerAddress:
    """The files of one node's trainer for one run of one app."""

    directory: Path
    key: str

    @classmethod
    def of(cls, context: Context, app_dir: Path, directory: Path) -> TrainerAddress:
        identity = f"{context.node_id}|{context.run_id}|{app_dir.resolve()}"
        address = cls(directory, hashlib.sha256(identity.encode()).hexdigest()[:24])
        if len(str(address.socket)) > MAX_SOCKET_PATH:
            raise TrainerError(
                f"trainer socket path {address.socket} is too long for a Unix socket; "
                f"set {TRAINER_DIR_ENV} to a shorter directory"
            )
        return address

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.key}.sock"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.key}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.key}.log"


def task_home(reference: str) -> Path | None:
    """The folder a ``module:object`` task is imported from (the installed app's, where Flower
    put it on ``sys.path``), so that the trainer imports the same code; None for a built-in task
    or one that cannot be found (the trainer then reports the import error itself)."""
    module, sep, _ = reference.partition(":")
    if not sep or not module:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    home = Path(spec.origin).resolve().parent
    depth = module.count(".") + (Path(spec.origin).name == "__init__.py")
    return home.parents[depth - 1] if depth else home


@dataclass(frozen=True)
class TrainerLaunch:
    """How to start a trainer: the app it runs (its task's folder), the engine's folder, the
    process it watches, how long it idles."""

    app_dir: Path
    idle_seconds: float
    parent_pid: int
    runtime_api: str = ""
    engine_dir: Path | None = None

    def argv(self, address: TrainerAddress, context: Context) -> list[str]:
        return [
            sys.executable,
            "-m",
            "client_app.trainer",
            "--socket",
            str(address.socket),
            "--lock",
            str(address.lock),
            "--run-id",
            str(context.run_id),
            "--node-id",
            str(context.node_id),
            "--idle-seconds",
            repr(self.idle_seconds),
            "--parent-pid",
            str(self.parent_pid),
            "--runtime-api",
            self.runtime_api,
        ]


def runtime_api_address(argv: Sequence[str] = sys.argv) -> str:
    """The SuperNode's Runtime API address from ``flwr-clientapp``'s own arguments ("" if absent)."""
    for index, arg in enumerate(argv):
        if arg == "--runtime-api-address" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--runtime-api-address="):
            return arg.split("=", 1)[1]
    return ""


def train(
    content: RecordDict,
    context: Context,
    idle_seconds: float,
    deadline: float,
    parent_pid: int | None = None,
    kind: str = "train",
) -> RecordDict:
    """Have the node's trainer train ``content`` (or evaluate it: ``kind="evaluate"``);
    ``context.state`` takes the trainer's state.

    ``deadline`` (epoch seconds) is when the task's TTL runs out: a trainer that has not
    answered by then is killed, and the task fails with :class:`TrainerError`, never a hang.
    A trainer started here leaves when ``parent_pid`` exits (default: this process's parent,
    the SuperExec that starts a ClientApp per message).
    """
    engine_dir = Path(__file__).resolve().parents[1]
    app_dir = task_home(str(context.run_config.get("task", ""))) or engine_dir
    address = TrainerAddress.of(context, app_dir, trainer_directory())
    launch = TrainerLaunch(app_dir, idle_seconds, parent_pid or os.getppid(), runtime_api_address(), engine_dir)
    request = protocol.TrainRequest(
        context.run_id, context.node_id, context.run_config, context.node_config, content, context.state, kind
    )
    with open(address.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect_or_start(address, launch, context, deadline)
        with connection:
            response = _exchange(connection, request, deadline, address.log)
    context.state = response.state
    if response.error:
        raise TrainerError(response.error)
    assert response.content is not None  # read_response guarantees content or error
    return response.content


def _connect_or_start(
    address: TrainerAddress, launch: TrainerLaunch, context: Context, deadline: float
) -> socket.socket:
    """A connection to the node's trainer; a missing or dead one is (re)started first."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(address.socket))
        if not process_leaving(_peer_pid(connection)):
            return connection
        # A killed trainer closes its files one by one: its listener can still take a connection
        # for a moment after the task it was running has seen it die. That one would be reset.
        connection.close()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address.socket.unlink(missing_ok=True)
    except (FileNotFoundError, ConnectionRefusedError):
        address.socket.unlink(missing_ok=True)  # a trainer that died leaves its socket behind
    _start(address, launch, context, min(deadline, time.time() + START_TIMEOUT_SECONDS))
    connection.connect(str(address.socket))
    return connection


def _start(address: TrainerAddress, launch: TrainerLaunch, context: Context, deadline: float) -> None:
    """Start a detached trainer (its own session: it outlives this process) and wait for it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            dict.fromkeys(
                filter(None, [str(launch.app_dir), str(launch.engine_dir or ""), os.environ.get("PYTHONPATH", "")])
            )
        ),
    }
    fd = os.open(address.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            launch.argv(address, context),
            cwd=launch.app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.time()))
    line = process.stdout.readline().decode(errors="replace") if ready else ""
    process.stdout.close()
    if not line.startswith(protocol.READY_LINE):
        if process.poll() is None:
            process.kill()
        raise TrainerError(
            f"the node's trainer did not start ({_why_not(process, ready)}); "
            f"its log: {address.log}: {_tail(address.log)}"
        )
    log.info("started the node's warm trainer (pid %s) for run %d", line.split()[-1], context.run_id)


def _exchange(
    connection: socket.socket, request: protocol.TrainRequest, deadline: float, trainer_log: Path
) -> protocol.TrainResponse:
    """Send the task and wait for the result until ``deadline``."""
    trainer_pid = _peer_pid(connection)
    try:
        connection.settimeout(max(0.1, deadline - time.time()))
        protocol.send_request(connection, request)
        return protocol.read_response(connection)
    except TimeoutError as err:
        if trainer_pid:  # a trainer that hung would hold every later task of the node too
            os.kill(trainer_pid, signal.SIGKILL)
        raise TrainerError(
            f"the node's trainer (pid {trainer_pid}) did not answer within the task's "
            "TTL; it was stopped and the next task starts a new one"
        ) from err
    except (protocol.ConnectionClosed, ConnectionError) as err:
        raise TrainerError(
            f"the node's trainer (pid {trainer_pid}) died during the task ({err}); the next task starts a "
            f"new one; its log: {trainer_log}: {_tail(trainer_log)}"
        ) from err


def _peer_pid(connection: socket.socket) -> int:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return 0
    pid, _uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, option, 12))
    return int(pid)


def process_leaving(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is gone or on its way out: a zombie, or in exit (Linux's ``PF_EXITING``
    flag, set before the process closes its files). Without ``/proc`` (macOS), ``kill(pid, 0)``
    alone decides; ``pid`` 0 (unknown) is never leaving."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: it exists
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return proc.is_dir()  # reaped between the two looks
    except (OSError, IndexError):
        return False
    state, flags = fields[0], int(fields[6])
    return state in ("Z", "X", "x") or bool(flags & PF_EXITING)


def _why_not(process: subprocess.Popen[bytes], ready: Sequence[object]) -> str:
    code = process.poll()
    if code is not None:
        return f"it exited with code {code}"
    return "it did not say ready in time" if not ready else "it said something else than ready"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(unreadable)"
    return " | ".join(text[-lines:]) or "(empty)"
