"""The federation a run folder was trained on, so that a resume starts the same one.

Node ``i`` of a local federation holds partition ``i`` of ``num_nodes`` with its device tier:
change the node count and every node trains on a different partition, change a tier and the
emulated speeds (and, tier-correlated, the data) move. The launcher writes this record as
``<run>/federation.json`` when it starts a federation; ``fedbuff resume`` reads it back,
starts exactly that, and refuses another one unless told to (``--new-federation``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

FILE = "federation.json"
FORMAT = 1


class FederationRecordError(ValueError):
    """``federation.json`` exists but cannot be read as a federation record."""


@dataclass(frozen=True)
class FederationRecord:
    """One tier per node (node ``i`` holds partition ``i`` of ``len(tiers)``), the extra node
    config of some nodes, and whether the nodes were virtual or masked their updates."""

    tiers: tuple[str, ...]
    node_overrides: Mapping[int, str] = field(default_factory=dict)
    simulation: bool = False
    secagg: bool = False

    @property
    def num_nodes(self) -> int:
        return len(self.tiers)

    def to_json(self) -> dict[str, object]:
        n = self.num_nodes
        nodes = [
            {"partition-id": i, "num-partitions": n, "device-tier": tier, "node-config": self.node_overrides.get(i, "")}
            for i, tier in enumerate(self.tiers)
        ]
        return {"format": FORMAT, "num-nodes": n, "nodes": nodes, "simulation": self.simulation, "secagg": self.secagg}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FederationRecord:
        try:
            nodes = list(data["nodes"])  # type: ignore[call-overload]
            if data.get("format") != FORMAT or [n["partition-id"] for n in nodes] != list(range(len(nodes))):
                raise ValueError("unknown format or partitions not 0..n-1")
            return cls(
                tiers=tuple(str(n["device-tier"]) for n in nodes),
                node_overrides={i: str(n["node-config"]) for i, n in enumerate(nodes) if n["node-config"]},
                simulation=bool(data["simulation"]),
                secagg=bool(data["secagg"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FederationRecordError(f"not a federation record: {err}") from err

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, run_dir: Path) -> FederationRecord | None:
        """The record in ``run_dir``, or None if the folder has none (made before records existed)."""
        path = run_dir / FILE
        if not path.exists():
            return None
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise FederationRecordError(f"{path}: {err}") from err

    def differences(self, other: FederationRecord) -> list[str]:
        """What ``other`` changes about this federation, one phrase per difference (empty: the same)."""
        found = []
        if other.num_nodes != self.num_nodes:
            found.append(
                f"{self.num_nodes} nodes -> {other.num_nodes} (num-partitions {self.num_nodes} -> "
                f"{other.num_nodes}: every node would hold a different partition)"
            )
        if other.tiers != self.tiers:
            found.append(f"tiers {','.join(self.tiers)} -> {','.join(other.tiers)}")
        if dict(other.node_overrides) != dict(self.node_overrides):
            found.append(f"node config {dict(self.node_overrides)} -> {dict(other.node_overrides)}")
        for name in ("simulation", "secagg"):
            if getattr(other, name) != getattr(self, name):
                found.append(f"{name} {getattr(self, name)} -> {getattr(other, name)}")
        return found
