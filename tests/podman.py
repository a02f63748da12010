"""A podman engine for the compose tests: the Docker API on a private socket, nothing left behind.

What this host needs (docker/README.md, "Podman"): docker/podman-containers.conf (runc and
ulimits crun cannot set here), ``podman system service`` for docker compose, and a driver for
healthchecks, which podman runs from systemd timers that this host lacks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.chaos import wait_for
from tests.conftest import ROOT

CONTAINERS_CONF = ROOT / "docker" / "podman-containers.conf"
HEALTHY_RECHECK_SECONDS = 30.0  # a healthy container's status only matters to later `up`s
STARTING_RECHECK_SECONDS = 2.0


class PodmanEngine:
    """``podman system service`` on a socket in ``workdir``, for one compose project."""

    def __init__(self, workdir: Path, project: str) -> None:
        self.workdir = workdir
        self.project = project
        self.socket = workdir / "podman.sock"
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(CONTAINERS_CONF),
            "DOCKER_HOST": f"unix://{self.socket}",
        }
        self._service: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self._drive_healthchecks, daemon=True)
        self._checked: dict[str, float] = {}

    def start(self) -> None:
        log = open(self.workdir / "podman-service.log", "wb")  # noqa: SIM115 (closed with the process)
        self._service = subprocess.Popen(
            [shutil.which("podman") or "podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self._answers, 60, "the podman API socket", poll=0.2)
        self._driver.start()

    def _answers(self) -> bool:
        assert self._service is not None and self._service.poll() is None, "podman system service exited"
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.connect(str(self.socket))
                conn.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"200 OK" in conn.recv(256)
        except OSError:
            return False

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def containers(self, all_: bool = False) -> dict[str, str]:
        """Name → status of this project's containers."""
        listed = self.podman(
            "ps",
            *(["--all"] if all_ else []),
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--format",
            "{{.Names}}\t{{.Status}}",
            check=False,
        )
        return dict(line.split("\t", 1) for line in listed.stdout.splitlines() if "\t" in line)

    def _drive_healthchecks(self) -> None:
        """Run the containers' healthchecks, as podman's systemd timers would."""
        while not self._stop.wait(STARTING_RECHECK_SECONDS):
            now = time.monotonic()
            for name, status in self.containers().items():
                if "(" not in status:  # no healthcheck defined
                    continue
                due = HEALTHY_RECHECK_SECONDS if "(healthy)" in status else STARTING_RECHECK_SECONDS
                if now - self._checked.get(name, 0.0) >= due:
                    self._checked[name] = now
                    self.podman("healthcheck", "run", name, timeout=30, check=False)

    def leftovers(self) -> list[str]:
        """What of this project is still there: containers, volumes, networks."""
        label = f"label=com.docker.compose.project={self.project}"
        found = [f"container {name}" for name in self.containers(all_=True)]
        for kind in ("volume", "network"):
            listed = self.podman(kind, "ls", "--filter", label, "--format", "{{.Name}}", check=False)
            found += [f"{kind} {name}" for name in listed.stdout.split()]
        return found

    def remove_everything(self) -> None:
        """Containers, volumes and networks of the project (also what compose did not get to)."""
        label = f"label=com.docker.compose.project={self.project}"
        names = list(self.containers(all_=True))
        if names:
            self.podman("rm", "--force", "--time", "5", *names, timeout=180, check=False)
        for kind in ("volume", "network"):
            listed = self.podman(kind, "ls", "--filter", label, "--format", "{{.Name}}", check=False)
            if listed.stdout.split():
                self.podman(kind, "rm", "--force", *listed.stdout.split(), timeout=120, check=False)

    def close(self) -> None:
        self._stop.set()
        if self._driver.is_alive():
            self._driver.join(timeout=60)
        if self._service is not None and self._service.poll() is None:
            os.killpg(self._service.pid, signal.SIGTERM)
            try:
                self._service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._service.pid, signal.SIGKILL)
                self._service.wait()
