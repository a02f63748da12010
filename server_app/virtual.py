"""Set up the virtual clock for a simulated federation: ask every node once which partition it
holds, then give each the tier and batches per task that the run's seeded data assignment says.

The tiers are the launcher's own assignment for real SuperNodes (the ``tier-mix`` quotas, or the
task's own where it ties tiers to its data), so a virtual node of partition ``p`` is the device
a real node of partition ``p`` emulates (docs/simulation.md). How many batches a task takes
comes from the node: it says how many training examples it holds.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedbuff import protocol
from fedbuff.partitioners import partition_tiers
from fedbuff.settings import RunSettings
from fedbuff.task import Task
from server_app.clock import VirtualClock, VirtualNode

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 300.0  # a thousand simulated nodes answer one short query each


class VirtualClockError(RuntimeError):
    """No node could be given a virtual device; the message says why."""


def virtual_clock(
    grid: Grid,
    settings: RunSettings,
    task: Task,
    model: list[np.ndarray],
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> VirtualClock:
    """Probe the nodes and build the clock; a node that does not answer gets no work."""
    node_ids = sorted(grid.get_node_ids())
    queries = [
        Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY, ttl=timeout) for node_id in node_ids
    ]
    identities: dict[int, tuple[int, int, int]] = {}
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
    counts = Counter(count for _, count, _ in identities.values())
    if len(counts) != 1:
        raise VirtualClockError(f"virtual-clock: the nodes must share one num-partitions, got {dict(counts)}")
    (num_partitions,) = counts
    tiers = planned_tiers(settings, task, num_partitions)
    nodes = {
        node_id: VirtualNode(partition, tiers[partition], batches_per_task(settings, examples))
        for node_id, (partition, _, examples) in identities.items()
    }
    log.info(
        "virtual clock: %d node(s) of %d partitions, tiers %s",
        len(nodes),
        num_partitions,
        dict(sorted(Counter(node.tier for node in nodes.values()).items())),
    )
    payload = sum(int(a.nbytes) for a in model)
    return VirtualClock(settings.device_model(), nodes, settings.task_ttl_seconds, payload)


def planned_tiers(settings: RunSettings, task: Task, num_partitions: int) -> list[str]:
    """Each partition's device tier: the task's own where it ties tiers to its data, else the
    ``tier-mix`` quotas (seeded, independent of the data)."""
    tiers = task.node_tiers(num_partitions)
    if tiers is not None:
        return list(tiers)
    return partition_tiers("iid", np.zeros(0), num_partitions, settings.seed, tier_mix=settings.tier_mix)


def batches_per_task(settings: RunSettings, examples: int) -> int:
    """Batches one task trains (as ``fedbuff.training.train`` counts them): ``local-epochs`` passes
    over the partition, at most ``local-steps`` when that is set."""
    batches = settings.local_epochs * math.ceil(examples / settings.batch_size)
    return min(batches, settings.local_steps) if settings.local_steps else batches
