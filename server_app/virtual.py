"""Set up the virtual clock for a simulated federation: ask every node once which partition it
holds, then give each the tier and batches per task that the run's seeded data assignment says.

The tiers come from ``fedbuff.run_data.client_tiers``, the launcher's own assignment for real
SuperNodes, so a virtual node of partition ``p`` is the device a real node of partition ``p``
emulates (docs/simulation.md).
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedbuff import protocol, run_data
from fedbuff.datasets import FederatedData
from fedbuff.settings import RunSettings
from server_app.clock import VirtualClock, VirtualNode

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 300.0  # a thousand simulated nodes answer one short query each


class VirtualClockError(RuntimeError):
    """No node could be given a virtual device; the message says why."""


def virtual_clock(
    grid: Grid,
    settings: RunSettings,
    data: FederatedData,
    model: list[np.ndarray],
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> VirtualClock:
    """Probe the nodes and build the clock; a node that does not answer gets no work."""
    node_ids = sorted(grid.get_node_ids())
    queries = [
        Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY, ttl=timeout) for node_id in node_ids
    ]
    identities: dict[int, tuple[int, int]] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        identity = None if reply.has_error() else protocol.read_identity(reply.content)
        if identity is not None:
            identities[reply.metadata.src_node_id] = identity
    if missing := len(node_ids) - len(identities):
        log.warning(
            "virtual clock: %d of %d node(s) did not say their partition; they get no work", missing, len(node_ids)
        )
    if not identities:
        raise VirtualClockError(
            f"virtual-clock: none of the {len(node_ids)} node(s) said which partition it holds "
            "(a ClientApp without this project's query handler?)"
        )
    counts = Counter(count for _, count in identities.values())
    if len(counts) != 1:
        raise VirtualClockError(f"virtual-clock: the nodes must share one num-partitions, got {dict(counts)}")
    (num_partitions,) = counts
    tiers = run_data.client_tiers(settings, num_partitions, data)
    sizes = [len(rows) for rows in run_data.all_client_rows(settings, data, num_partitions)]
    nodes = {
        node_id: VirtualNode(partition, tiers[partition], batches_per_task(settings, sizes[partition]))
        for node_id, (partition, _) in identities.items()
    }
    log.info(
        "virtual clock: %d node(s) of %d partitions, tiers %s",
        len(nodes),
        num_partitions,
        dict(sorted(Counter(node.tier for node in nodes.values()).items())),
    )
    payload = sum(int(a.nbytes) for a in model)
    return VirtualClock(settings.device_model(), nodes, settings.task_ttl_seconds, payload)


def batches_per_task(settings: RunSettings, examples: int) -> int:
    """Batches one task trains (as ``fedbuff.model.train`` counts them): ``local-epochs`` passes
    over the partition, at most ``local-steps`` when that is set."""
    batches = settings.local_epochs * math.ceil(examples / settings.batch_size)
    return min(batches, settings.local_steps) if settings.local_steps else batches
