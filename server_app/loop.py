"""The asynchronous loop: keep ``concurrency`` tasks in flight and never wait for a round.

It pushes train tasks with ``grid.push_messages``, pulls whatever has arrived with
``grid.pull_messages``, stamps each task with the model version it carries, computes
staleness on arrival, validates the reply, hands it to the strategy and re-dispatches
to the node that just replied (docs/architecture.md, "One update's path").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedbuff import protocol
from fedbuff.settings import RunSettings, SettingsError
from fedbuff.task import Metric
from fedbuff.task import Task as TaskAPI
from server_app.clock import Clock, WallClock
from server_app.events import EventKind, EventSink
from server_app.federated_eval import FederatedEvaluator, FederatedResult
from server_app.nodes import NodePool
from server_app.stats import RunStats, largest_gap, tier_label
from server_app.validation import Rejection, ValidUpdate, update_byte_limit, validate_reply
from strategies import AsyncStrategy, ClientUpdate, Outcome
from strategies.base import StepOutcome
from strategies.registry import spec_of

log = logging.getLogger(__name__)

Evaluator = Callable[[list[np.ndarray]], Mapping[str, float]]  # the task's metrics of a model
TierEvaluator = Callable[[], Mapping[str, float]]  # per-tier accuracy of the model last evaluated
Validator = Callable[[RecordDict], ValidUpdate | Rejection]

ERROR_REASONS = {
    ErrorCode.MESSAGE_UNAVAILABLE: "ttl-expired",
    ErrorCode.NODE_UNAVAILABLE: "node-unavailable",
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: "client-raised",
    ErrorCode.CLIENT_APP_CRASHED: "client-crashed",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "client-load-failed",
}
LOST_REASON = "lost"  # no reply at all, long past the TTL
OTHER_ERROR = "other-error"  # an error code the loop has no name for
# Errors the client side caused (not slowness, not a departure): they count towards a node's back-off.
CLIENT_FAULTS = ("client-raised", "client-crashed", "client-load-failed", OTHER_ERROR)
LOST_GRACE_SECONDS = 30.0  # a task this long past its TTL with no reply at all is written off
IDLE_SLEEP_SECONDS = 0.1
FEDERATED_GRACE_SECONDS = 5.0  # at the end, past the TTL, a missing evaluate reply is written off


@dataclass(frozen=True)
class Task:
    """A train task in flight: where it went, which model version it carries, when (clock
    time, and wall time for writing off a task that never answers), how many local steps."""

    node_id: int
    version: int
    sent_at: float
    sent_wall: float
    local_steps: int | None = None  # the scheduler's plan (None: the run config's)


@dataclass(frozen=True)
class Evaluation:
    """Central evaluation of one model version: the task's metrics on the server's held-out
    data (none when the server holds no data), and, when known, accuracy on each device tier's
    own held-out data."""

    version: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    accuracy_by_tier: Mapping[str, float] = field(default_factory=dict)
    # federated evaluation of the same version on the nodes' own held-out data (when it ran)
    federated: Mapping[str, float] = field(default_factory=dict)
    federated_by_tier: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def quality(self) -> Mapping[str, float]:
        """The metrics the run reports for this version: central where the server evaluated,
        else federated."""
        return self.metrics or self.federated

    @property
    def accuracy(self) -> float | None:
        return self.quality.get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.quality.get("loss")

    @property
    def tier_accuracy(self) -> Mapping[str, float]:
        """Accuracy per tier: on each tier's held-out data centrally, else federated."""
        if self.accuracy_by_tier or self.metrics:
            return self.accuracy_by_tier
        return {tier: m["accuracy"] for tier, m in self.federated_by_tier.items() if "accuracy" in m}

    def describe(self) -> str:
        """``accuracy 0.912 loss 0.310 (v5)`` (``federated …`` from the nodes), or that nothing was evaluated."""
        if not self.quality:
            return "not evaluated yet" if not self.metrics else "no metrics"
        source = "" if self.metrics else "federated "
        return source + " ".join(f"{name} {value:.3f}" for name, value in self.quality.items()) + f" (v{self.version})"


@dataclass(frozen=True)
class RunResult:
    """What a training run (the asynchronous loop or Flower's FedAvg) ended with."""

    reason: str  # why it stopped, as logged
    evaluations: list[Evaluation]
    stats: RunStats
    model: list[np.ndarray]  # the final global model
    version: int  # server steps (FedAvg: rounds) taken
    virtual_seconds: float | None = None  # the virtual clock's time at the end (None: wall clock)


class AsyncLoop:
    """Drives one asynchronous training run until a stop condition; see :meth:`run`."""

    def __init__(
        self,
        grid: Grid,
        strategy: AsyncStrategy,
        settings: RunSettings,
        evaluate: Evaluator,
        events: EventSink,
        validate: Validator | None = None,
        task_config: Mapping[str, ConfigRecordValues] | None = None,
        stop_when: Callable[[], str | None] | None = None,
        on_step: Callable[[AsyncLoop], None] | None = None,
        evaluate_tiers: TierEvaluator | None = None,
        max_num_examples: int | None = None,
        clock: Clock | None = None,
        target: Target | None = None,
        federated: FederatedEvaluator | None = None,
    ) -> None:
        """``validate`` checks each reply (default: a plaintext delta shaped like the model,
        claiming at most ``max_num_examples`` examples, default ``settings.max_num_examples``);
        ``task_config`` goes into every task's config (e.g. the mask service's public key);
        ``stop_when`` is one more stop condition (e.g. the privacy budget): a reason or None;
        ``on_step`` runs after every server step (e.g. the checkpoint cadence);
        ``evaluate_tiers`` gives per-tier accuracy of the model ``evaluate`` saw last;
        ``clock`` decides when a reply counts as arrived (default: the wall clock);
        ``target`` is the run's target (default: the settings' with a classification task's metrics);
        ``federated`` evaluates each evaluated version on the nodes too (federated evaluation).

        A resumed run sets ``stats`` and ``evaluations`` to the checkpoint's before :meth:`run`."""
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.evaluate = evaluate
        self.events = events
        self.validate = validate or partial(
            validate_reply,
            template=strategy.model,
            max_update_norm=settings.max_update_norm,
            max_bytes=update_byte_limit(settings.max_update_bytes, strategy.model),
            max_num_examples=max_num_examples or settings.max_num_examples,
        )
        self.task_config = dict(task_config or {})
        self.stop_when = stop_when or (lambda: None)
        self.on_step = on_step or (lambda loop: None)
        self.evaluate_tiers = evaluate_tiers or (lambda: {})
        self.target = target or Target.of(settings)
        self.federated = federated
        self.clock = clock or WallClock()
        if federated is not None:
            federated.on_result = self.federated_result
            federated.tier_of = self.clock.tier_of
        self.nodes = NodePool(
            grid,
            on_change=self._node_changed,
            backoff_seconds=settings.error_backoff_seconds,
            backoff_max_seconds=settings.error_backoff_max_seconds,
            rank=self.clock.rank,
        )
        self.stats = RunStats()
        self.tasks: dict[str, Task] = {}
        self.node_tiers: dict[int, str] = {}  # learned from replies, allow-listed
        # The synchronous baseline: every task of a round returns before the next dispatch.
        self.barrier = spec_of(settings.strategy).barrier
        self._round_open = False
        self.evaluations: list[Evaluation] = []
        self._started = 0.0
        self._payload: tuple[int, RecordDict] | None = None

    # -- public ---------------------------------------------------------------------------

    def run(self) -> str:
        """Train until a stop condition holds; return the reason (also logged)."""
        self._started = time.monotonic()
        if not self.evaluations or self.evaluations[-1].version != self.strategy.version:
            self._evaluate_now()
        while (reason := self._stop_reason()) is None:
            self.nodes.refresh(self.clock.now())
            self._dispatch()
            replies = self._pull()
            self.clock.arrived(replies)
            applied = 0
            while True:
                self._run_timers()  # a group timer due before the next arrival closes first
                if (arrival := self.clock.next()) is None:
                    break
                self._handle(arrival.reply, arrival.at, arrival.expired)
                applied += 1
                self._close_round()
                if self._stop_reason() is not None:
                    break  # the rest arrived after the run's last step
                if self.clock.refills_each_reply:
                    self._dispatch()  # at the reply's virtual time: a freed slot never idles
            self._write_off_lost(time.monotonic())
            self._close_round()
            if not applied:
                time.sleep(IDLE_SLEEP_SECONDS)
        if self.evaluations[-1].version != self.strategy.version:
            self._evaluate_now()
        if self.federated is not None:  # the last model's evaluation, waited for up to its TTL
            self.federated.start_due(self.nodes.online, Counter(task.node_id for task in self.tasks.values()))
            self.federated.wait(self.settings.task_ttl_seconds + FEDERATED_GRACE_SECONDS)
        log.info("stopping: %s (%d task(s) in flight abandoned)", reason, len(self.tasks))
        self._emit(EventKind.STOP, reason=reason, in_flight=len(self.tasks))
        return reason

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`run` started."""
        return time.monotonic() - self._started

    # -- dispatch -------------------------------------------------------------------------

    def _pull(self) -> list[Message]:
        """The train replies that have arrived; evaluate replies go to federated evaluation."""
        waiting = self.clock.waiting(self.tasks)
        if self.federated is None:
            return list(self.grid.pull_messages(waiting)) if waiting else []
        self.federated.start_due(self.nodes.online, Counter(task.node_id for task in self.tasks.values()))
        evaluating = set(self.federated.waiting())
        ids = [*waiting, *evaluating]
        replies = list(self.grid.pull_messages(ids)) if ids else []
        self.federated.take(r for r in replies if r.metadata.reply_to_message_id in evaluating)
        self.federated.write_off_late()
        return [r for r in replies if r.metadata.reply_to_message_id not in evaluating]

    def _dispatch(self) -> None:
        free = self.settings.concurrency - len(self.tasks)
        if (self.barrier and self.tasks) or free <= 0:
            return
        load = Counter(task.node_id for task in self.tasks.values())
        per_node = 1 if self.barrier else self.settings.tasks_per_node
        scheduler = self.strategy.scheduler
        chosen = self.nodes.candidates(
            load,
            per_node,
            self.clock.now(),
            limit=free,
            usable=lambda node_id: self.clock.times(node_id) and scheduler.may_dispatch(node_id),
        )
        if not chosen:
            return
        self._round_open = True
        version = self.strategy.version
        for node_id in scheduler.order(chosen):
            steps = scheduler.plan(node_id, self.clock.now()).local_steps
            # One push per message: the Grid returns ids only for the messages it stored.
            pushed = list(self.grid.push_messages([self._train_message(node_id, version, steps)]))
            sent_at = self.clock.now()
            if not pushed:
                log.warning("push to node %d was refused", node_id)
                scheduler.returned(node_id, sent_at, sent_at, steps, trained=False)
                continue
            self.tasks[pushed[0]] = Task(node_id, version, sent_at, time.monotonic(), steps)
            self.clock.dispatched(pushed[0], node_id, sent_at, steps)
            self.nodes.mark_used(node_id)
            self.stats.dispatched += 1
            self._emit(
                EventKind.DISPATCH,
                node=node_id,
                version=version,
                in_flight=len(self.tasks),
                bytes=sum(a.nbytes for a in self.strategy.model),
                **({} if steps is None else {"local_steps": steps}),
            )

    def _train_message(self, node_id: int, version: int, local_steps: int | None = None) -> Message:
        # TTL counts from Message.created_at: build each message right before pushing it.
        return Message(
            self._task_content(version, local_steps),
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
            ttl=self.settings.task_ttl_seconds,
            group_id=str(version),
        )

    def _task_content(self, version: int, local_steps: int | None = None) -> RecordDict:
        """What a task of ``version`` carries: the model, serialised once per version, and the
        config, plus the scheduler's ``local-steps`` for this task when it planned them."""
        if self._payload is None or self._payload[0] != version:
            self._payload = (version, protocol.task_content(self.strategy.model, version, self.task_config))
        shared = self._payload[1]
        if local_steps is None:
            return shared
        config = ConfigRecord({**shared.config_records[protocol.CONFIG], protocol.LOCAL_STEPS: local_steps})
        return RecordDict({protocol.ARRAYS: shared.array_records[protocol.ARRAYS], protocol.CONFIG: config})

    def _returned(self, task: Task, now: float, trained: bool) -> None:
        """Tell the scheduler a task ended (before its update, if any, reaches the strategy)."""
        self.strategy.scheduler.returned(task.node_id, now, task.sent_at, task.local_steps, trained)

    def _run_timers(self) -> None:
        """Make the strategy's timed decisions whose time the clock has reached (FedCompass's
        group timers; on the virtual clock that time comes before any later arrival)."""
        while (due := self.strategy.scheduler.next_due()) is not None and self.clock.reach(due):
            started = time.perf_counter()
            outcomes = self.strategy.tick(self.clock.now())
            for step in outcomes:
                self._after_attempt(step, time.perf_counter() - started)
            if self.clock.refills_each_reply and outcomes:
                self._dispatch()  # the group's members start again at the close's (virtual) time
            if not outcomes:
                break

    # -- replies --------------------------------------------------------------------------

    def _handle(self, reply: Message, now: float, expired: bool = False) -> None:
        task = self.tasks.pop(reply.metadata.reply_to_message_id, None)
        if task is None:  # answered already, written off, or never sent by this server
            self.stats.rejected["unknown-task"] += 1
            log.warning("ignoring a reply to an unknown task %s", reply.metadata.reply_to_message_id)
            self._emit(EventKind.INVALID, reason="unknown-task")
            return
        if expired:  # on the virtual clock: the device model made it outlast its TTL
            self._task_failed(task, ERROR_REASONS[ErrorCode.MESSAGE_UNAVAILABLE], "(virtual time)", now)
            return
        if reply.has_error():
            reason = ERROR_REASONS.get(reply.error.code, OTHER_ERROR)
            self._task_failed(task, reason, f"(code {reply.error.code}) {reply.error.reason or ''}", now)
            return
        round_trip = now - task.sent_at
        self.stats.replies += 1
        self.stats.round_trip_sum += round_trip
        checked = self.validate(reply.content)
        if isinstance(checked, Rejection):
            self.stats.rejected[checked.reason] += 1
            log.warning("rejected update from node %d (%s): %s", task.node_id, checked.reason, checked.detail)
            self._emit(EventKind.INVALID, node=task.node_id, reason=checked.reason, round_trip=round(round_trip, 3))
            self._returned(task, now, trained=False)
            self.nodes.failed(task.node_id, now)
            return
        tier = self.node_tiers[task.node_id] = self.clock.tier_of(task.node_id) or tier_label(
            checked.device.get(protocol.DEVICE_TIER)
        )
        staleness = self.strategy.version - task.version
        self._returned(task, now, trained=True)
        aggregate_started = time.perf_counter()
        try:
            receipt = self.strategy.receive(
                ClientUpdate(task.node_id, checked.delta, checked.num_examples, staleness, checked.mask)
            )
        except ValueError as err:  # e.g. a replayed mask: the buffer is left as it was
            self.stats.rejected["refused"] += 1
            log.warning("strategy refused the update from node %d: %s", task.node_id, err)
            self._emit(EventKind.INVALID, node=task.node_id, reason="refused", round_trip=round(round_trip, 3))
            self.nodes.failed(task.node_id, now)
            return
        aggregate_seconds = time.perf_counter() - aggregate_started
        self.stats.outcomes[receipt.outcome.value] += 1
        if receipt.outcome is Outcome.ACCEPTED:
            self.stats.staleness[staleness] += 1
            self.stats.accepted_by_tier[tier] += 1
            self.nodes.succeeded(task.node_id)
        self._count_distrust(task.node_id, checked, receipt.weight_clipped)
        metrics = checked.metrics
        self._emit(
            EventKind.UPDATE,
            node=task.node_id,
            outcome=receipt.outcome.value,
            staleness=staleness,
            weight=round(receipt.weight, 6),
            round_trip=round(round_trip, 3),
            bytes=sum(d.nbytes for d in checked.delta),
            buffer_fill=self.strategy.buffer_fill,
            device_kind=checked.device.get(protocol.DEVICE_KIND, "unknown"),
            **_partition(checked.device),
            **(
                {"train_seconds": round(metrics[protocol.TRAIN_SECONDS], 3)}
                if protocol.TRAIN_SECONDS in metrics
                else {}
            ),
            **({} if checked.norm is None else {"norm": round(checked.norm, 6)}),
            **({"dp_epsilon": metrics[protocol.DP_EPSILON]} if protocol.DP_EPSILON in metrics else {}),
            **({"dropped_fields": list(checked.dropped)} if checked.dropped else {}),
            **({"weight_clipped": True} if receipt.weight_clipped else {}),
        )
        if receipt.step is not None:
            self._after_attempt(receipt.step, aggregate_seconds)

    def _count_distrust(self, node_id: int, checked: ValidUpdate, weight_clipped: bool) -> None:
        """Count what the server did not take at face value in an otherwise valid reply:
        reported fields it dropped, and an example weight it cut to ``max-example-weight``."""
        for name in checked.dropped:
            self.stats.dropped_fields[name] += 1
        if checked.dropped:
            log.warning("dropped invalid reported field(s) %s of node %d", ", ".join(checked.dropped), node_id)
        if weight_clipped:
            self.stats.clipped["example-weight"] += 1
            log.warning(
                "example weight of node %d (num-examples %d) clipped to max-example-weight %g",
                node_id,
                checked.num_examples,
                self.settings.max_example_weight,
            )

    def _task_failed(self, task: Task, reason: str, detail: str, now: float) -> None:
        self._returned(task, now, trained=False)
        self.stats.errors[reason] += 1
        log.warning("task on node %d failed: %s %s", task.node_id, reason, detail.strip()[:200])
        self._emit(EventKind.ERROR, node=task.node_id, reason=reason)
        if reason == ERROR_REASONS[ErrorCode.NODE_UNAVAILABLE]:
            self.nodes.retire(task.node_id, now)
        elif reason in CLIENT_FAULTS:
            self.nodes.failed(task.node_id, now)

    def _close_round(self) -> None:
        """Under the barrier, a round whose tasks all returned steps on what it got."""
        if not (self.barrier and self._round_open and not self.tasks):
            return
        self._round_open = False
        started = time.perf_counter()
        if self._stop_reason() is None and (step := self.strategy.flush()) is not None:
            self._after_attempt(step, time.perf_counter() - started)

    def _write_off_lost(self, now: float) -> None:
        limit = self.settings.task_ttl_seconds + LOST_GRACE_SECONDS
        for message_id, task in list(self.tasks.items()):
            if now - task.sent_wall > limit:
                del self.tasks[message_id]
                self.clock.forget(message_id)
                self._returned(task, self.clock.now(), trained=False)
                self.stats.errors[LOST_REASON] += 1
                log.warning("task on node %d never answered; written off", task.node_id)
                self._emit(EventKind.ERROR, node=task.node_id, reason=LOST_REASON)

    # -- server steps ---------------------------------------------------------------------

    def _after_attempt(self, step: StepOutcome, aggregate_seconds: float) -> None:
        """Account for one attempted server step: taken, dropped at flush, or refused by the guard
        (and, for FedCompass, the arrival group whose close it was)."""
        if step.group is not None:
            closing = step.group
            self._emit(
                EventKind.GROUP_CLOSE,
                group=closing.group,
                reason=closing.reason,
                arrived=closing.arrived,
                late=closing.late,
            )
        if step.flush_error is not None:
            self.stats.errors[step.flush_error] += 1
            log.warning("buffer dropped at flush: %s", step.flush_error)
            self._emit(EventKind.FLUSH_FAILED, reason=step.flush_error)
        elif step.refused is not None:
            self.stats.refused_steps[step.refused] += 1
            log.warning(
                "step guard refused the step to version %d (%s, step norm %s; bound %g): buffer dropped, model kept",
                self.strategy.version + 1,
                step.refused,
                "non-finite" if step.norm is None else f"{step.norm:.4g}",
                step.bound,
            )
            self._emit(
                EventKind.STEP_REFUSED,
                version=self.strategy.version,
                reason=step.refused,
                **({} if step.norm is None else {"step_norm": round(step.norm, 6)}),
            )
        if step.stepped:
            self._after_step(aggregate_seconds, step.norm)

    def _after_step(self, aggregate_seconds: float, step_norm: float | None) -> None:
        version = self.strategy.version
        if version % self.settings.eval_every == 0:
            self._evaluate_now()
        latest = self.latest_quality()
        log.info(
            "step %3d | %s | staleness mean %.2f max %d | in-flight %d | accepted %d refused %d errors %d | %.0fs",
            version,
            latest.describe(),
            self.stats.staleness_mean(),
            self.stats.staleness_max(),
            len(self.tasks),
            self.stats.accepted,
            self.stats.refused,
            sum(self.stats.errors.values()),
            self.clock.now(),
        )
        self._emit(
            EventKind.STEP,
            version=version,
            in_flight=len(self.tasks),
            accepted=self.stats.accepted,
            refused=self.stats.refused,
            staleness_mean=round(self.stats.staleness_mean(), 3),
            aggregate_seconds=round(aggregate_seconds, 6),
            **({} if step_norm is None else {"step_norm": round(step_norm, 6)}),
        )
        self.on_step(self)

    def _evaluate_now(self) -> Evaluation:
        metrics = dict(self.evaluate(self.strategy.model))
        by_tier = dict(self.evaluate_tiers()) if metrics else {}
        evaluation = Evaluation(self.strategy.version, metrics, by_tier)
        self.evaluations.append(evaluation)
        self._emit(EventKind.EVAL, **eval_fields(evaluation))
        if self.federated is not None:
            self.federated.request(self.strategy.version, self._task_content(self.strategy.version))
        return evaluation

    def federated_result(self, result: FederatedResult) -> None:
        """A finished federated evaluation: kept with its version's evaluation, published, logged."""
        for index in range(len(self.evaluations) - 1, -1, -1):
            if self.evaluations[index].version == result.version:
                self.evaluations[index] = replace(
                    self.evaluations[index], federated=result.metrics, federated_by_tier=result.metrics_by_tier
                )
                break
        self._emit(EventKind.FEDERATED_EVAL, **result.fields())
        log.info(
            "federated evaluation of v%d on %d node(s), %d example(s): %s%s",
            result.version,
            result.nodes,
            result.examples,
            " ".join(f"{name} {value:.3f}" for name, value in result.metrics.items()) or "no replies",
            f" ({result.failed} failed)" if result.failed else "",
        )

    def latest_quality(self) -> Evaluation:
        """The newest evaluation that has metrics (central or federated), else the newest."""
        return next((e for e in reversed(self.evaluations) if e.quality), self.evaluations[-1])

    def _node_changed(self, node_id: int, state: str, online: int) -> None:
        self._emit(EventKind.NODE, node=node_id, state=state, online=online)

    def _emit(self, kind: EventKind, **fields: object) -> None:
        """Publish one event (schema in ``server_app.events``) with its time and node tier."""
        if "node" in fields:
            # cast: every caller passes node=<a node id, an int>
            node_id = cast(int, fields["node"])
            fields["tier"] = self.clock.tier_of(node_id) or self.node_tiers.get(node_id, "unknown")
        self.events.event(kind, time=round(self.clock.now(), 3), **fields)

    def _stop_reason(self) -> str | None:
        settings = self.settings
        if (reason := self.stop_when()) is not None:
            return reason
        if self.strategy.version >= settings.max_server_steps:
            return f"max-server-steps ({settings.max_server_steps}) reached"
        if self.target is not None and (reason := self.target.reached(self.latest_quality())) is not None:
            return reason
        if self.elapsed >= settings.max_wall_seconds:
            return f"max-wall-seconds ({settings.max_wall_seconds:.0f}) reached"
        return None


@dataclass(frozen=True)
class Target:
    """A stop condition on one of the task's metrics: reached once an evaluation has it at or
    past ``value`` (``>=`` where higher is better, ``<=`` where lower is). Every strategy asks it."""

    metric: str
    value: float
    higher_is_better: bool = True
    knob: str = "target-metric"  # how the run config set it: target-accuracy is the shorthand

    @classmethod
    def of(cls, settings: RunSettings, metrics: Sequence[Metric] = TaskAPI.metrics) -> Target | None:
        """The run's target (None: none), its direction from the task's ``metrics``; a
        :class:`SettingsError` for a metric the task does not declare."""
        if settings.target_accuracy:
            name, value, knob = "accuracy", settings.target_accuracy, "target-accuracy"
        elif settings.target_metric:
            name, value, knob = settings.target_metric, settings.target_value, "target-metric"
        else:
            return None
        declared = {metric.name: metric for metric in metrics}
        if name not in declared:
            raise SettingsError(f"{knob}: the task has no metric {name!r}; it evaluates {sorted(declared)}")
        return cls(name, value, declared[name].higher_is_better, knob)

    def reached(self, evaluation: Evaluation) -> str | None:
        """Why the run stops at ``evaluation`` (None while the target is not reached)."""
        got = evaluation.quality.get(self.metric)
        if got is None or not (got >= self.value if self.higher_is_better else got <= self.value):
            return None
        where = "" if evaluation.metrics else " (federated evaluation)"
        if self.knob == "target-accuracy":
            return f"target-accuracy {self.value} reached at version {evaluation.version}{where}"
        direction = ">=" if self.higher_is_better else "<="
        return (
            f"target {self.metric} {direction} {self.value:g} reached at version {evaluation.version}"
            f" ({got:.4g}){where}"
        )


def eval_fields(evaluation: Evaluation) -> dict[str, object]:
    """An ``eval`` event's fields: the version, every metric, and ``loss`` / ``accuracy`` and the
    per-tier report where the task has them (schema in ``server_app.events``)."""
    fields: dict[str, object] = {"version": evaluation.version, "metrics": dict(evaluation.metrics)}
    fields.update({name: evaluation.metrics[name] for name in ("loss", "accuracy") if name in evaluation.metrics})
    if by_tier := evaluation.accuracy_by_tier:
        fields.update(accuracy_by_tier=dict(by_tier), accuracy_gap=largest_gap(by_tier))
    return fields


def _partition(device: Mapping[str, str | int]) -> dict[str, int]:
    """``partition`` / ``partitions`` of a reply's device record (per-tier held-out data needs
    them); validation keeps the pair only when both are ints with ``0 <= id < count``."""
    part, count = device.get(protocol.PARTITION_ID), device.get(protocol.NUM_PARTITIONS)
    return {"partition": part, "partitions": count} if isinstance(part, int) and isinstance(count, int) else {}
