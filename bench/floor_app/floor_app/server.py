"""The floor's ServerApp: keep one task per node in flight with bare push/pull, nothing else.

``driver = "floor"``: push ``tasks-per-node`` tasks to every node, pull every 0.1 s (the
project's loop idles the same), re-push to a node as soon as a reply of it is in; stop after ``max-server-steps``
replies. Writes ``metrics.jsonl`` (``update`` events with ``round_trip``) and
``summary.json`` into ``run-dir`` in the project's format, so the launcher and the
benchmark read both drivers the same way. ``driver = "ours"`` runs the project's ServerApp.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedbuff import protocol

app = ServerApp()
POLL_SECONDS = 0.1
TTL_SECONDS = 120.0


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    if config["driver"] == "ours":
        from server_app.app import main as project_main

        project_main(grid, context)
        return
    run_floor(
        grid,
        int(config["concurrency"]),
        int(config["max-server-steps"]),
        int(config["hidden-units"]),
        Path(str(config["run-dir"])),
        int(config["tasks-per-node"]),
    )


def model(hidden: int) -> list[np.ndarray]:
    """Zeros shaped like the project's digits MLP, so both drivers ship the same payload."""
    return [
        np.zeros((hidden, 64), np.float32),
        np.zeros(hidden, np.float32),
        np.zeros((10, hidden), np.float32),
        np.zeros(10, np.float32),
    ]


def run_floor(
    grid: Grid, concurrency: int, replies_wanted: int, hidden: int, run_dir: Path, tasks_per_node: int = 1
) -> None:
    """Keep ``tasks_per_node`` bare tasks in flight on each of ``concurrency`` nodes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    arrays = ArrayRecord(model(hidden))
    nodes: list[int] = []
    while len(nodes) < concurrency:
        nodes = sorted(grid.get_node_ids())
        time.sleep(POLL_SECONDS)
    started = time.monotonic()
    in_flight: dict[str, tuple[int, float]] = {}

    def push(node_id: int) -> None:
        config = ConfigRecord({protocol.SERVER_VERSION: 0})
        message = Message(
            RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config}),
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
            ttl=TTL_SECONDS,
        )
        for message_id in grid.push_messages([message]):
            in_flight[message_id] = (node_id, time.monotonic())

    for node_id in nodes[:concurrency]:
        for _ in range(tasks_per_node):
            push(node_id)
    replies = 0
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as history:
        while replies < replies_wanted:
            pulled = list(grid.pull_messages(list(in_flight)))
            for reply in pulled:
                node_id, sent_at = in_flight.pop(reply.metadata.reply_to_message_id)
                now = time.monotonic()
                replies += 1
                outcome = "error" if reply.has_error() else "update"
                history.write(
                    json.dumps(
                        {
                            "event": outcome,
                            "node": node_id,
                            "time": round(now - started, 3),
                            "round_trip": round(now - sent_at, 3),
                        }
                    )
                    + "\n"
                )
                history.flush()  # read live by bench/process_cost.py
                if replies + len(in_flight) < replies_wanted:
                    push(node_id)
            if not pulled:
                time.sleep(POLL_SECONDS)
    summary = {
        "stop_reason": f"{replies_wanted} replies",
        "server_steps": replies,
        "wall_seconds": round(time.monotonic() - started, 2),
        "run_dir": str(run_dir.resolve()),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
