"""The warm node trainer: one long-lived process per SuperNode and run that trains task after task.

Flower 1.41 starts a fresh ClientApp process per message; this process is what that one hands
its task to (``client_app.warm`` starts it with the node's first message). It imports torch once,
keeps the run's task and the node's data in memory and owns the device (a CUDA context is made once), and
runs :func:`client_app.task.train_task` for every request on its Unix socket.

It serves only its own user (the socket lives in a 0700 directory, and the peer's uid is checked
where the OS reports it), only its own run and node (the request must say so), and one task at
a time. It exits when no task came for ``--idle-seconds`` (and no ClientApp holds the node's
lock, so a task about to arrive is never dropped), when its SuperExec (``--parent-pid``) or
its SuperNode's Runtime API (``--runtime-api``) is gone, and on SIGTERM.

Run by ``client_app.warm``: ``python -m client_app.trainer --socket S --lock L ...``.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from flwr.app import Context

from client_app import trainer_protocol as protocol
from client_app.warm import process_leaving
from fedbuff.task import TaskError

log = logging.getLogger("client_app.trainer")

WATCH_SECONDS = 1.0  # how often the trainer checks that its SuperExec and SuperNode are there
RUNTIME_PROBE_EVERY = 5  # probe the Runtime API every this many watches
READ_TIMEOUT_SECONDS = 60.0  # a connected ClientApp must have sent its request by then


@dataclass(frozen=True)
class TrainerConfig:
    """Where the trainer listens, whose tasks it takes, and when it leaves."""

    socket_path: Path
    lock_path: Path
    run_id: int
    node_id: int
    idle_seconds: float
    parent_pid: int
    runtime_api: str = ""  # host:port of the SuperNode's Runtime API; "" skips the probe


class TrainerServer:
    """Accepts one connection at a time and answers its train request."""

    def __init__(self, config: TrainerConfig) -> None:
        from client_app.task import MemoryData

        self.config = config
        self._data = MemoryData()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(config.socket_path))
        os.chmod(config.socket_path, 0o600)
        self._inode = os.stat(config.socket_path).st_ino
        self._listener.listen(8)
        self._lock: IO[str] | None = None
        self.tasks = 0

    def serve(self) -> str:
        """Answer requests until idle; return why the trainer stops."""
        while True:
            self._listener.settimeout(self.config.idle_seconds)
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                if self._no_client_waiting():
                    return f"idle for {self.config.idle_seconds:g} s"
                continue
            with connection:
                self._answer(connection)

    def close(self) -> None:
        """Stop listening and remove the socket, if it is still this trainer's."""
        self._listener.close()
        try:
            if os.stat(self.config.socket_path).st_ino == self._inode:
                os.unlink(self.config.socket_path)
        except FileNotFoundError:
            pass

    def _no_client_waiting(self) -> bool:
        """True when no ClientApp holds the node's lock; the lock is then kept until exit, so a
        ClientApp that comes later starts a new trainer instead of talking to a leaving one."""
        lock = open(self.config.lock_path, "a")  # noqa: SIM115 (held until the process exits)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        return True

    def _answer(self, connection: socket.socket) -> None:
        peer_uid = _peer_uid(connection)
        if peer_uid is not None and peer_uid != os.geteuid():
            log.warning("refused a connection from uid %d (this trainer serves uid %d only)", peer_uid, os.geteuid())
            return
        connection.settimeout(READ_TIMEOUT_SECONDS)
        try:
            request = protocol.read_request(connection)
        except (protocol.ProtocolError, OSError) as err:
            log.warning("dropped a malformed request: %s", err)
            return
        connection.settimeout(None)
        response = self._train(request)
        try:
            protocol.send_response(connection, response)
        except OSError as err:  # the ClientApp gave up (its task's TTL ran out)
            log.warning("could not deliver task %d's result: %s", self.tasks, err)

    def _train(self, request: protocol.TrainRequest) -> protocol.TrainResponse:
        from client_app.task import evaluate_task, train_task

        if (request.run_id, request.node_id) != (self.config.run_id, self.config.node_id):
            return protocol.TrainResponse(
                request.state,
                error=(
                    f"this trainer serves run {self.config.run_id} on node {self.config.node_id}, "
                    f"not run {request.run_id} on node {request.node_id}"
                ),
            )
        self.tasks += 1
        context = Context(
            request.run_id, request.node_id, dict(request.node_config), request.state, dict(request.run_config)
        )
        started = time.monotonic()
        log.info("task %d started", self.tasks)
        try:
            run = evaluate_task if request.kind == "evaluate" else train_task
            content = run(request.content, context, self._data)
        except TaskError as err:  # the user's task said what is wrong: one line, no traceback
            log.error("task %d failed: %s", self.tasks, err)
            return protocol.TrainResponse(context.state, error=str(err))
        except Exception as err:  # the task fails, the trainer stays: the ClientApp reports it
            log.exception("task %d failed", self.tasks)
            return protocol.TrainResponse(context.state, error=f"{type(err).__name__}: {err}")
        log.info("task %d trained in %.2f s", self.tasks, time.monotonic() - started)
        return protocol.TrainResponse(context.state, content, details={"trainer-tasks": self.tasks})


def _peer_uid(connection: socket.socket) -> int | None:
    """The connecting process's uid where the OS says it (Linux ``SO_PEERCRED``), else None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, option, 12))
    return int(uid)


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=2.0):
            return True
    except (OSError, ValueError):
        return False


def watch_node(config: TrainerConfig, on_gone) -> threading.Thread:
    """A daemon thread that calls ``on_gone(reason)`` once the SuperExec or SuperNode is gone."""

    def watch() -> None:
        misses, beat = 0, 0
        while True:
            time.sleep(WATCH_SECONDS)
            if process_leaving(config.parent_pid):
                on_gone(f"its SuperExec (pid {config.parent_pid}) is gone")
                return
            beat += 1
            if config.runtime_api and beat % RUNTIME_PROBE_EVERY == 0:
                misses = 0 if _reachable(config.runtime_api) else misses + 1
                if misses >= 2:
                    on_gone(f"its SuperNode's Runtime API ({config.runtime_api}) is gone")
                    return

    thread = threading.Thread(target=watch, name="node-watch", daemon=True)
    thread.start()
    return thread


def parse_args(argv: list[str] | None = None) -> TrainerConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket to listen on")
    parser.add_argument("--lock", required=True, type=Path, help="the node's lock file")
    parser.add_argument("--run-id", required=True, type=int)
    parser.add_argument("--node-id", required=True, type=int)
    parser.add_argument("--idle-seconds", required=True, type=float)
    parser.add_argument("--parent-pid", required=True, type=int, help="the SuperExec that ran the ClientApp")
    parser.add_argument("--runtime-api", default="", help="host:port of the SuperNode's Runtime API")
    args = parser.parse_args(argv)
    return TrainerConfig(
        args.socket, args.lock, args.run_id, args.node_id, args.idle_seconds, args.parent_pid, args.runtime_api
    )


def main(argv: list[str] | None = None) -> None:
    """Import the heavy parts, listen, say ready on stdout, serve until a reason to stop."""
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s trainer[%(process)d] %(levelname)s %(message)s"
    )
    import fedbuff.model  # noqa: F401  (torch, once for the trainer's life)

    server = TrainerServer(config)

    def leave(reason: str) -> None:
        log.info("exiting after %d task(s): %s", server.tasks, reason)
        server.close()
        os._exit(0)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        leave("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    watch_node(config, leave)
    log.info("serving run %d on node %d at %s (pid %d)", config.run_id, config.node_id, config.socket_path, os.getpid())
    sys.stdout.write(f"{protocol.READY_LINE} {os.getpid()}\n")
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the starter stops reading
    leave(server.serve())


if __name__ == "__main__":
    main()
