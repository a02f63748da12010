"""Federated evaluation: the current model goes to a sample of nodes as ``evaluate`` messages;
each evaluates it on its own held-out split with the task's metrics and replies metrics only;
the server averages them, weighted by each node's held-out example count, overall and per tier.

It never blocks training: evaluate messages are pushed beside the train tasks (idle nodes
first, at most ``federated-eval-fraction`` of the online nodes), their replies are pulled with
the loop's own pulls, and a reply that does not come within ``task-ttl-seconds`` is written off
and counted. An evaluation is complete, and published, once every node asked has answered or
failed. This is what a run reports when its server holds no data (docs/architecture.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedbuff import protocol
from fedbuff.task import Metric
from server_app.stats import TIER_LABELS, tier_label

log = logging.getLogger(__name__)

LATE_GRACE_SECONDS = 5.0  # past its TTL a missing evaluate reply is written off


@dataclass(frozen=True)
class FederatedResult:
    """One finished federated evaluation of model ``version``: the example-weighted means of the
    task's metrics over the nodes that answered, and per tier; how many answered and failed."""

    version: int
    metrics: Mapping[str, float]
    metrics_by_tier: Mapping[str, Mapping[str, float]]
    nodes: int
    examples: int
    failed: int

    def fields(self) -> dict[str, object]:
        """The ``federated-eval`` event's fields (schema in ``server_app.events``)."""
        return {
            "version": self.version,
            "metrics": dict(self.metrics),
            "metrics_by_tier": {tier: dict(values) for tier, values in self.metrics_by_tier.items()},
            "nodes": self.nodes,
            "examples": self.examples,
            "failed": self.failed,
        }


@dataclass
class _Round:
    """The replies of one evaluation so far."""

    version: int
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # message id -> (node, deadline)
    sums: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    tier_sums: dict[str, Counter[str]] = field(default_factory=dict)
    tier_examples: Counter[str] = field(default_factory=Counter)
    nodes: int = 0
    failed: int = 0


def read_reply(content: RecordDict, metrics: Sequence[Metric], max_examples: int) -> tuple[int, dict[str, float], str]:
    """``(examples, {metric: value}, tier)`` of an evaluate reply; a :class:`ValueError` naming
    what is wrong (a missing or non-finite metric, an example count out of range)."""
    record = content.metric_records.get(protocol.METRICS)
    if record is None:
        raise ValueError("no metrics record")
    examples = record.get(protocol.NUM_EXAMPLES)
    if not isinstance(examples, int) or isinstance(examples, bool) or not 1 <= examples <= max_examples:
        raise ValueError(f"{protocol.NUM_EXAMPLES} must be an int in [1, {max_examples}], got {examples!r}")
    values = {}
    for metric in metrics:
        value = record.get(metric.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"metric {metric.name!r} must be a finite number, got {value!r}")
        values[metric.name] = float(value)
    device = content.config_records.get(protocol.DEVICE)
    return examples, values, tier_label(device.get(protocol.DEVICE_TIER) if device is not None else None)


class FederatedEvaluator:
    """Runs federated evaluations beside the loop's training (one at a time) and publishes each."""

    def __init__(
        self,
        grid: Grid,
        metrics: Sequence[Metric],
        fraction: float,
        ttl_seconds: float,
        max_examples: int,
    ) -> None:
        """``on_result`` (set by whoever runs it: the loop) receives each finished evaluation;
        ``tier_of`` (idem) says which tier the server knows a node by."""
        self.grid = grid
        self.metrics = tuple(metrics)
        self.fraction = fraction
        self.ttl_seconds = ttl_seconds
        self.max_examples = max_examples
        self.on_result: Callable[[FederatedResult], None] = lambda result: None
        # the tier the server knows a node by (the virtual clock's), else the reply's own
        self.tier_of: Callable[[int], str | None] = lambda node: None
        self.results: list[FederatedResult] = []
        self.failures: Counter[str] = Counter()
        self._round: _Round | None = None
        self._due: tuple[int, RecordDict] | None = None

    @property
    def busy(self) -> bool:
        """An evaluation is waiting for replies or for nodes to ask."""
        return self._round is not None or self._due is not None

    def waiting(self) -> list[str]:
        """Message ids of the evaluate tasks in flight."""
        return list(self._round.pending) if self._round is not None else []

    def request(self, version: int, content: RecordDict) -> None:
        """Evaluate ``content`` (the model of ``version``) once nodes can be asked. A request made
        while an evaluation is running replaces any request not yet started (the newest model)."""
        self._due = (version, content)

    def start_due(self, online: Iterable[int], training: Mapping[int, int]) -> None:
        """Push the requested evaluation to a sample of ``online`` nodes, the ones with the fewest
        train tasks in flight (``training``: node -> tasks) first; nothing while one is running."""
        if self._due is None or self._round is not None:
            return
        nodes = sorted(online, key=lambda node: (training.get(node, 0), node))
        if not nodes:
            return
        version, content = self._due
        self._due = None
        count = min(len(nodes), max(1, math.ceil(self.fraction * len(nodes))))
        round_ = _Round(version)
        deadline = time.monotonic() + self.ttl_seconds + LATE_GRACE_SECONDS
        for node in nodes[:count]:
            message = Message(content, dst_node_id=node, message_type=MessageType.EVALUATE, ttl=self.ttl_seconds)
            pushed = list(self.grid.push_messages([message]))
            if pushed:
                round_.pending[pushed[0]] = (node, deadline)
        if round_.pending:
            self._round = round_
            log.info("federated evaluation of version %d on %d node(s)", version, len(round_.pending))

    def take(self, replies: Iterable[Message]) -> None:
        """Account the evaluate replies among ``replies`` (others are ignored)."""
        round_ = self._round
        if round_ is None:
            return
        for reply in replies:
            entry = round_.pending.pop(reply.metadata.reply_to_message_id, None)
            if entry is None:
                continue
            node = entry[0]
            if reply.has_error():
                self._fail(round_, node, f"error {reply.error.code}: {reply.error.reason or ''}".strip())
                continue
            try:
                examples, values, tier = read_reply(reply.content, self.metrics, self.max_examples)
            except ValueError as err:
                self._fail(round_, node, f"invalid: {err}")
                continue
            tier = self.tier_of(node) or tier
            round_.nodes += 1
            round_.examples += examples
            round_.sums.update({name: value * examples for name, value in values.items()})
            if tier in TIER_LABELS:
                round_.tier_sums.setdefault(tier, Counter()).update({n: v * examples for n, v in values.items()})
                round_.tier_examples[tier] += examples
        self._finish_if_done()

    def write_off_late(self, now: float | None = None) -> None:
        """Count every evaluate task past its deadline as failed (``late``) and finish the round."""
        round_ = self._round
        if round_ is None:
            return
        now = time.monotonic() if now is None else now
        for message_id, (node, deadline) in list(round_.pending.items()):
            if now >= deadline:
                del round_.pending[message_id]
                self._fail(round_, node, "late")
        self._finish_if_done()

    def wait(self, timeout: float) -> None:
        """Pull until the running evaluation is complete, at most ``timeout`` seconds (the run's end)."""
        end = time.monotonic() + timeout
        while self._round is not None and time.monotonic() < end:
            self.take(self.grid.pull_messages(self.waiting()))
            self.write_off_late()
            if self._round is not None:
                time.sleep(0.1)
        if self._round is not None:
            self.write_off_late(math.inf)

    def _fail(self, round_: _Round, node: int, reason: str) -> None:
        round_.failed += 1
        kind = reason.split(":", 1)[0]
        self.failures[kind] += 1
        log.warning("federated evaluation: node %d did not evaluate version %d (%s)", node, round_.version, reason)

    def _finish_if_done(self) -> None:
        round_ = self._round
        if round_ is None or round_.pending:
            return
        self._round = None
        metrics = {name: total / round_.examples for name, total in round_.sums.items()} if round_.examples else {}
        by_tier = {
            tier: {name: total / round_.tier_examples[tier] for name, total in sums.items()}
            for tier, sums in sorted(round_.tier_sums.items())
        }
        result = FederatedResult(round_.version, metrics, by_tier, round_.nodes, round_.examples, round_.failed)
        self.results.append(result)
        self.on_result(result)
