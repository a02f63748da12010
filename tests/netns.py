"""Linux network namespaces as stand-in hosts: one switch, N hosts, veth cables, tc shaping.

Every name this module creates starts with a per-run prefix, every address lives inside
the namespaces it creates (10.231.0.0/24 by default, never routed to the root namespace),
and :meth:`Network.close` removes everything it made: call it from a finalizer.

Needs root and ``ip`` / ``tc`` (iproute2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    """An ``ip`` / ``tc`` command failed."""


def missing_requirements() -> str | None:
    """Why this machine cannot build namespaces, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (apt-get install iproute2)"
    probe = f"fbprobe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as err:
        return f"cannot create a network namespace here: {err}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check)


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass
class Host:
    """One namespace with one interface ``eth0`` cabled to the switch."""

    name: str  # logical name, e.g. "superlink"
    netns: str  # namespace name (unique per run)
    address: str  # IPv4 address of eth0
    switch_port: str  # the cable's end inside the switch namespace

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it in place)."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Network:
    """A switch namespace with a bridge and hosts attached by veth pairs."""

    prefix: str = field(default_factory=lambda: f"fb{uuid.uuid4().hex[:6]}")
    subnet: str = "10.231.0"
    hosts: dict[str, Host] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def open(self) -> Network:
        """Create the switch namespace and its bridge."""
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace with ``eth0`` at the next address of the subnet."""
        index = len(self.hosts) + 1
        host = Host(name=name, netns=f"{self.prefix}-{name}", address=f"{self.subnet}.{index}", switch_port=f"p{index}")
        self._add_namespace(host.netns)
        # Both ends are created inside namespaces: nothing ever appears in the root namespace.
        _ip(
            "-n",
            self.switch,
            "link",
            "add",
            host.switch_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
        )
        _ip("-n", self.switch, "link", "set", host.switch_port, "master", "br0")
        _ip("-n", self.switch, "link", "set", host.switch_port, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def limit_rate(self, name: str, rate: str = "512kbit", burst: str = "16kb", latency: str = "200ms") -> None:
        """Token-bucket limit both directions of ``name``'s cable (``tc qdisc ... tbf``)."""
        host = self.hosts[name]
        for netns, dev in ((host.netns, "eth0"), (self.switch, host.switch_port)):
            _run(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    burst,
                    "latency",
                    latency,
                ]
            )

    def qdisc(self, name: str) -> str:
        """``tc qdisc show`` of ``name``'s eth0 (to check shaping is in place)."""
        host = self.hosts[name]
        return _run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "show", "dev", "eth0"]).stdout

    def unplug(self, name: str) -> None:
        """Pull ``name``'s cable out of the switch (a link failure)."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "down")

    def plug(self, name: str) -> None:
        """Put ``name``'s cable back (the link comes up again)."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "up")

    def close(self) -> None:
        """Delete every namespace this network created (their veths go with them).

        Stop the processes running inside first: a namespace lives on, unnamed, while
        a process still uses it.
        """
        for name in reversed(self._namespaces):
            _ip("netns", "del", name, check=False)
        self._namespaces.clear()
        self.hosts.clear()

    def leftovers(self) -> list[str]:
        """Namespaces with this network's prefix that still exist (should be none after close)."""
        listed = _ip("netns", "list", check=False).stdout.split("\n")
        return [line.split()[0] for line in listed if line.startswith(self.prefix)]
