"""The baseline users compare us with: Flower's own FedAvg, unchanged, round by round.

It is driven the way Flower users drive it (``FedAvg.start``), so it pays Flower's round
barrier and its 3 s pull interval. Only the Grid is wrapped, to count the replies it
carries and publish them as loop events; FedAvg itself sees an ordinary Grid. One thing the
wrapper does not pass on: a reply claiming more examples than the run's bound (FedAvg weights
by that claim unchecked, so one liar would become the model). FedAvg's own weights ``n_i / Σn``
are not clipped: this is the baseline as users run it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedbuff import protocol
from fedbuff.settings import RunSettings
from server_app.events import EventKind, EventSink
from server_app.federated_eval import FederatedEvaluator
from server_app.loop import ERROR_REASONS, OTHER_ERROR, Evaluation, RunResult, Target, eval_fields
from server_app.stats import RunStats, tier_label

log = logging.getLogger(__name__)
Evaluator = Callable[[list[np.ndarray]], Mapping[str, float]]


class CountingGrid:
    """A Grid that records every train reply passing through ``send_and_receive`` and holds back
    those whose ``num-examples`` is not an int in ``[1, max_examples]``."""

    def __init__(self, grid: Grid, stats: RunStats, events: EventSink, started: float, max_examples: int) -> None:
        self._grid = grid
        self._stats = stats
        self._events = events
        self._started = started
        self._max_examples = max_examples

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and all(m.metadata.message_type == MessageType.EVALUATE for m in messages):
            # federated evaluation: not updates; an incredible example count is held back all the same
            replies = self._grid.send_and_receive(messages, timeout=timeout)
            return [r for r in replies if r.has_error() or self._credible(r)]
        self._stats.dispatched += len(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        now = round(time.monotonic() - self._started, 3)
        passed = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                reason = ERROR_REASONS.get(reply.error.code, OTHER_ERROR)
                self._stats.errors[reason] += 1
                self._events.event(EventKind.ERROR, node=node, tier="unknown", reason=reason, time=now)
                passed.append(reply)
                continue
            if not self._credible(reply):
                self._stats.rejected["num-examples"] += 1  # the rejection reason, validation's name
                log.warning(
                    "holding back the reply of node %d: num-examples not an int in [1, %d]", node, self._max_examples
                )
                self._events.event(EventKind.INVALID, node=node, tier="unknown", reason="num-examples", time=now)
                continue
            passed.append(reply)
            device: Mapping[str, ConfigRecordValues] = reply.content.config_records.get(protocol.DEVICE, {})
            tier = tier_label(str(device.get(protocol.DEVICE_TIER)))
            self._stats.outcomes["accepted"] += 1
            self._stats.staleness[0] += 1
            self._stats.accepted_by_tier[tier] += 1
            self._events.event(EventKind.UPDATE, node=node, tier=tier, outcome="accepted", staleness=0, time=now)
        lost = len(messages) - len(replies)
        if lost > 0:
            self._stats.errors["round-timeout"] += lost
        return passed

    def _credible(self, reply: Message) -> bool:
        """Whether every MetricRecord's ``num-examples`` (FedAvg's weight) is within the bound."""
        counts = [record.get(protocol.NUM_EXAMPLES) for record in reply.content.metric_records.values()]
        return bool(counts) and all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= self._max_examples for n in counts
        )


def run_flower_fedavg(
    grid: Grid,
    settings: RunSettings,
    initial: list[np.ndarray],
    evaluate: Evaluator,
    events: EventSink,
    max_examples: int,
    target: Target | None = None,
    federated: FederatedEvaluator | None = None,
) -> RunResult:
    """``max-server-steps`` rounds of Flower's FedAvg over ``concurrency`` sampled nodes; replies
    claiming more than ``max_examples`` examples never reach it; the rounds end early at
    ``target`` or ``max-wall-seconds``. With ``federated``, Flower's own federated evaluation
    (``fraction_evaluate``) runs on that share of the nodes each round and is reported as ours."""
    from flwr.serverapp.strategy import FedAvg

    started = time.monotonic()
    stats = RunStats()
    evaluations: list[Evaluation] = []
    federated_rounds: dict[int, dict[str, float]] = {}

    class RecordingFedAvg(FedAvg):
        """Flower's FedAvg, keeping each round's aggregated federated evaluation."""

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            replies = list(replies)
            metrics = super().aggregate_evaluate(server_round, replies)
            if metrics is not None:
                values = {k: float(v) for k, v in metrics.items() if k != protocol.NUM_EXAMPLES}  # type: ignore[arg-type]
                federated_rounds[server_round] = values
                events.event(
                    EventKind.FEDERATED_EVAL,
                    time=round(time.monotonic() - started, 3),
                    version=server_round,
                    metrics=values,
                    metrics_by_tier={},
                    nodes=sum(not r.has_error() for r in replies),
                    examples=0,
                    failed=sum(r.has_error() for r in replies),
                )
            return metrics

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the round's model; stop Flower's rounds at the target or the wall-time limit."""
        model = arrays.to_numpy_ndarrays()
        evaluation = Evaluation(server_round, dict(evaluate(model)), federated=federated_rounds.get(server_round, {}))
        evaluations.append(evaluation)
        events.event(EventKind.EVAL, time=round(time.monotonic() - started, 3), **eval_fields(evaluation))
        reason = target.reached(evaluation) if target is not None else None
        if reason is None and time.monotonic() - started >= settings.max_wall_seconds:
            reason = f"max-wall-seconds ({settings.max_wall_seconds:.0f}) reached"
        if reason is not None:
            raise _RoundsStopped(reason, model, server_round)
        return MetricRecord(dict(evaluation.metrics))

    online = max(1, len(list(grid.get_node_ids())))
    cohort = min(settings.concurrency, online)
    strategy = RecordingFedAvg(
        fraction_train=min(1.0, settings.concurrency / online),
        fraction_evaluate=federated.fraction if federated is not None else 0.0,
        min_evaluate_nodes=1,
        min_train_nodes=cohort,
        min_available_nodes=cohort,
    )
    try:
        result = strategy.start(
            CountingGrid(grid, stats, events, started, max_examples),  # type: ignore[arg-type]
            ArrayRecord(initial),
            num_rounds=settings.max_server_steps,
            timeout=settings.task_ttl_seconds,
            train_config=ConfigRecord({protocol.REPLY: protocol.REPLY_WEIGHTS}),
            evaluate_fn=central,
        )
    except _RoundsStopped as stop:
        reason, model, rounds = stop.reason, stop.model, stop.round
    else:
        reason = f"max-server-steps ({settings.max_server_steps} rounds) reached"
        model, rounds = result.arrays.to_numpy_ndarrays(), settings.max_server_steps
    log.info("stopping: %s", reason)
    events.event(EventKind.STOP, time=round(time.monotonic() - started, 3), reason=reason, in_flight=0)
    return RunResult(reason, evaluations, stats, model, rounds)


class _RoundsStopped(Exception):
    """Raised from the evaluation callback to end Flower's rounds early (its ``start`` has no
    stop condition but the round count): why, the round's model, and the round."""

    def __init__(self, reason: str, model: list[np.ndarray], server_round: int) -> None:
        super().__init__(reason)
        self.reason, self.model, self.round = reason, model, server_round
