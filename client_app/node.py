"""What a SuperNode says about itself through ``--node-config``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import UserConfigValue

from client_app.faults import FAULTS
from fedbuff.settings import DEVICE_TIERS

REAL_DEVICE = "real"


@dataclass(frozen=True)
class NodeProfile:
    """Partition, device tier and (tests only) an injected fault of one SuperNode.

    ``device-tier`` ``real`` (the default) means no emulation: the device is as fast
    as it is. ``test-fault`` breaks every reply (``client_app.faults``); only tests set it.
    """

    partition_id: int
    num_partitions: int
    device_tier: str = REAL_DEVICE
    test_fault: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(
                f"node config partition-id={self.partition_id} is outside [0, num-partitions={self.num_partitions})"
            )
        if self.device_tier not in (*DEVICE_TIERS, REAL_DEVICE):
            raise ValueError(
                f"node config device-tier={self.device_tier!r}; choose one of {(*DEVICE_TIERS, REAL_DEVICE)}"
            )
        if self.test_fault not in FAULTS:
            raise ValueError(f"node config test-fault={self.test_fault!r}; choose one of {FAULTS}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, UserConfigValue]) -> NodeProfile:
        """Read the profile; partition keys are required, the rest default."""
        missing = [k for k in ("partition-id", "num-partitions") if k not in node_config]
        if missing:
            raise ValueError(f"node config lacks {missing}: start the SuperNode with --node-config")
        return cls(
            partition_id=int(node_config["partition-id"]),
            num_partitions=int(node_config["num-partitions"]),
            device_tier=str(node_config.get("device-tier", REAL_DEVICE)),
            test_fault=str(node_config.get("test-fault", "")),
        )
