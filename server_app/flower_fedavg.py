"""The baseline users compare us with: Flower's own FedAvg, unchanged, round by round.

It is driven the way Flower users drive it (``FedAvg.start``), so it pays Flower's round
barrier and its 3 s pull interval. Only the Grid is wrapped, to count the replies it
carries and publish them as loop events; FedAvg itself sees an ordinary Grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedbuff.settings import RunSettings
from server_app.events import EventSink
from server_app.loop import ERROR_REASONS, OTHER_ERROR, Evaluation
from server_app.stats import RunStats, tier_label

Evaluator = Callable[[list[np.ndarray]], tuple[float, float]]


class CountingGrid:
    """A Grid that records every train reply passing through ``send_and_receive``."""

    def __init__(self, grid: Grid, stats: RunStats, events: EventSink, started: float) -> None:
        self._grid = grid
        self._stats = stats
        self._events = events
        self._started = started

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._stats.dispatched += len(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        now = round(time.monotonic() - self._started, 3)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                reason = ERROR_REASONS.get(reply.error.code, OTHER_ERROR)
                self._stats.errors[reason] += 1
                self._events.event("error", node=node, tier="unknown", reason=reason, time=now)
                continue
            device = reply.content.config_records.get("device", {})
            tier = tier_label(str(device.get("device-tier")))
            self._stats.outcomes["accepted"] += 1
            self._stats.staleness[0] += 1
            self._stats.accepted_by_tier[tier] += 1
            self._events.event("update", node=node, tier=tier, outcome="accepted", staleness=0, time=now)
        lost = len(messages) - len(replies)
        if lost > 0:
            self._stats.errors["round-timeout"] += lost
        return replies


def run_flower_fedavg(
    grid: Grid, settings: RunSettings, initial: list[np.ndarray], evaluate: Evaluator,
    events: EventSink,
) -> tuple[str, list[Evaluation], RunStats, list[np.ndarray], int]:
    """``max-server-steps`` rounds of Flower's FedAvg over ``concurrency`` sampled nodes."""
    from flwr.serverapp.strategy import FedAvg

    started = time.monotonic()
    stats = RunStats()
    evaluations: list[Evaluation] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate(arrays.to_numpy_ndarrays())
        evaluations.append(Evaluation(server_round, loss, accuracy))
        events.event("eval", version=server_round, loss=loss, accuracy=accuracy,
                     time=round(time.monotonic() - started, 3))
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    online = max(1, len(list(grid.get_node_ids())))
    cohort = min(settings.concurrency, online)
    strategy = FedAvg(
        fraction_train=min(1.0, settings.concurrency / online),
        fraction_evaluate=0.0,
        min_train_nodes=cohort,
        min_available_nodes=cohort,
    )
    result = strategy.start(
        CountingGrid(grid, stats, events, started),  # type: ignore[arg-type]
        ArrayRecord(initial),
        num_rounds=settings.max_server_steps,
        timeout=settings.task_ttl_seconds,
        train_config=ConfigRecord({"reply": "weights"}),
        evaluate_fn=central,
    )
    reason = f"max-server-steps ({settings.max_server_steps} rounds) reached"
    return reason, evaluations, stats, result.arrays.to_numpy_ndarrays(), settings.max_server_steps
