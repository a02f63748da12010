"""``flwr-simulation`` whose message sweep asks only the nodes that have a message waiting.

Flower 1.41's simulation engine hands messages to its workers from one thread
(``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``): every 0.1 s it asks *every*
virtual node for its next message, and each ask walks every stored message under the state's
lock, checking its TTL and federation. With 1,000 nodes and 100 tasks in flight that is 100,000
checks per sweep, while the ServerApp's pushes and pulls wait for the same lock: the project's
loop made half as many server steps per minute with 1,000 idle virtual clients as with 100
(BENCHMARKS.md, "Scale in Flower's simulation engine").

:func:`sweep_waiting_nodes` is that sweep with one change: it first reads which nodes have an
undelivered message (one pass over the store) and asks only those, in Flower's node order, with
Flower's own ``get_message_ins``. Where the state is not the in-memory one this was written
against (no ``message_ins_store`` / ``lock``), Flower's sweep runs unchanged; so it does with
``FEDBUFF_FLOWER_SWEEP=1``. The launcher puts this ``flwr-simulation`` first on the SuperLink's
``PATH``; the rest of the command is Flower's own.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from queue import Queue
from typing import Any

FLOWER_SWEEP_ENV = "FEDBUFF_FLOWER_SWEEP"
SWEEP_SECONDS = 0.1  # Flower's own pause between sweeps

Sweep = Callable[[Any, "Queue[Any]", Mapping[int, int], threading.Event], None]


def waiting_nodes(state: Any) -> set[int] | None:
    """Destination nodes of the messages not delivered yet; None if the state does not say."""
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if not isinstance(store, Mapping) or lock is None:
        return None
    with lock:
        return {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}


def sweep_waiting_nodes(
    state: Any, queue: Queue[Any], nodes_mapping: Mapping[int, int], f_stop: threading.Event, *, flowers: Sweep
) -> None:
    """Put the next message of every node that has one in ``queue``, every 0.1 s, until ``f_stop``
    (``flowers``, Flower's own sweep, where the state does not say which nodes wait)."""
    if waiting_nodes(state) is None:
        flowers(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        waiting = waiting_nodes(state) or set()
        for node_id in [n for n in nodes_mapping if n in waiting]:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(SWEEP_SECONDS)


def install() -> bool:
    """Replace Flower's sweep in this process; False (nothing changed) where it is not there or
    ``FEDBUFF_FLOWER_SWEEP=1``."""
    if os.environ.get(FLOWER_SWEEP_ENV) == "1":
        return False
    from flwr.server.superlink.fleet.vce import vce_api

    flowers = getattr(vce_api, "add_messages_to_queue", None)
    if flowers is None:
        return False
    vce_api.add_messages_to_queue = functools.partial(sweep_waiting_nodes, flowers=flowers)
    return True


def main() -> None:
    """Flower's ``flwr-simulation``, with the sweep installed first."""
    install()
    from flwr.simulation.app import flwr_simulation

    flwr_simulation()
