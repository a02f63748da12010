"""Prometheus exporter for the asynchronous loop: one more sink of ``server_app.events``.

The exporter owns its own :class:`prometheus_client.CollectorRegistry` (never the
process-global one) and turns each loop event into metric updates. It serves
``/metrics`` over HTTP once :meth:`MetricsExporter.start` is called.

Naming (docs/architecture.md, "Metrics and the run history"): every series starts with
``fl_``, uses base units (seconds, bytes, ratios 0..1), counters end in ``_total``,
distributions are histograms (never summaries), and labels come only from bounded,
server-side allow-lists:

- ``device_tier``: ``stats.TIER_LABELS`` (high, mid, low, real) plus ``unknown``;
- ``device_kind``: ``cuda``, ``mps``, ``cpu``, ``unknown``;
- ``outcome``: ``accepted``, ``stale``, ``duplicate``, ``invalid``, ``error``;
- ``reason``: ``validation.REJECTION_REASONS`` (+ ``other``) for invalid updates, the
  loop's error reasons for stragglers and drop-outs (see below);
- ``direction``: ``up`` (client → server) and ``down`` (server → client);
- ``field``: ``reply_fields.DROPPED_FIELDS``, the reported fields a valid reply may have
  dropped (``other`` for names without a rule);
- ``reason`` of refused server steps: ``guard.STEP_GUARD_REASONS``.

A node id or any client-supplied string never becomes a label value: unknown values
map to ``unknown`` / ``other`` / ``other-error``.

Stragglers and drop-outs, precisely:

- ``fl_stragglers_total{reason="deadline"}`` counts every *reply* (an ``update`` or an
  ``invalid`` event) whose server-measured round trip exceeded
  ``MetricsConfig.straggler_deadline_seconds`` (0 disables this count). The reply is
  still used; being late is not an error.
- ``fl_stragglers_total{reason="ttl"}`` counts every ``error`` event whose reason is
  ``ttl-expired``: the task's TTL ran out before the node answered.
- ``fl_dropouts_total{reason}`` counts every other ``error`` event: ``node-unavailable``
  (the node left), ``lost`` (no reply at all, written off by the loop), and the client
  failures ``client-raised``, ``client-crashed``, ``client-load-failed``, ``other-error``.

Every straggler-by-TTL and every drop-out is also counted in
``fl_updates_total{outcome="error"}``.

A non-finite (or non-numeric) value is never observed: a NaN would poison a
histogram's ``_sum`` for the life of the process. It is counted in
``fl_dropped_observations_total{metric}`` instead. A missing field is simply skipped.
The exporter never raises into the loop: an exception while handling an event is
logged once and counted in ``fl_exporter_errors_total``.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from threading import Thread
from typing import Any

from flwr.common.constant import ErrorCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from server_app.events import EventKind
from server_app.loop import ERROR_REASONS, LOST_REASON, OTHER_ERROR
from server_app.reply_fields import DROPPED_FIELDS, OTHER
from server_app.stats import TIER_LABELS
from server_app.validation import REJECTION_REASONS
from strategies import Outcome
from strategies.compass import CLOSE_REASONS
from strategies.guard import STEP_GUARD_REASONS

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464
TIERS = (*TIER_LABELS, "unknown")
DEVICE_KINDS = ("cuda", "mps", "cpu", "unknown")
MAX_METRIC_LABELS = 16  # distinct task metric names exported (the task declares a few)
UPDATE_OUTCOMES = tuple(outcome.value for outcome in Outcome)
OUTCOMES = (*UPDATE_OUTCOMES, "invalid", "error")
INVALID_REASONS = (*REJECTION_REASONS, "other")
TTL_REASON = ERROR_REASONS[ErrorCode.MESSAGE_UNAVAILABLE]
DROPOUT_REASONS = (*(r for r in ERROR_REASONS.values() if r != TTL_REASON), LOST_REASON, OTHER_ERROR)
STRAGGLER_REASONS = ("deadline", "ttl")
DIRECTIONS = ("up", "down")

STALENESS_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100)
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
FAST_SECONDS_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
GROUP_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
NORM_BUCKETS = (0.001, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000)


@dataclass(frozen=True)
class MetricsConfig:
    """Where the exporter listens and how it classifies stragglers.

    ``address`` defaults to loopback: exposing metrics beyond the host is a deliberate
    choice (``0.0.0.0`` inside a container). ``port`` defaults to 9464, a fixed port so a
    Prometheus scrape config can name it; ``0`` asks the OS for any free port (tests,
    several runs on one host), and :meth:`MetricsExporter.start` returns the actual URL.
    ``straggler_deadline_seconds``: a reply slower than this counts as a straggler
    (``reason="deadline"``); ``0`` disables that count.
    """

    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    straggler_deadline_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics port must be in [0, 65535], got {self.port}")
        if not self.straggler_deadline_seconds >= 0:
            raise ValueError(f"straggler deadline must be >= 0 seconds, got {self.straggler_deadline_seconds}")


def tier_of(value: object) -> str:
    """A ``device_tier`` label value: the allow-listed tier or ``unknown``."""
    return value if isinstance(value, str) and value in TIERS else "unknown"


def device_kind_of(value: object) -> str:
    """A ``device_kind`` label value: ``cuda``/``mps``/``cpu`` (``cuda:1`` → ``cuda``) or ``unknown``."""
    if not isinstance(value, str):
        return "unknown"
    kind = value.split(":", 1)[0].strip().lower()
    return kind if kind in DEVICE_KINDS else "unknown"


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (NaN, ±Inf, not a number)."""
    if isinstance(value, bool | str | bytes):  # True is not a count; "3" is a client's string
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricsExporter:
    """An :class:`~server_app.events.EventSink` that keeps Prometheus series up to date.

    Call :meth:`event` from the loop's thread only (the HTTP server thread only reads
    the registry, which ``prometheus_client`` makes thread-safe).
    """

    def __init__(self, config: MetricsConfig | None = None, registry: CollectorRegistry | None = None) -> None:
        self.config = config or MetricsConfig()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._thread: Thread | None = None
        self.url: str | None = None
        self._last_step_time: float | None = None
        self._in_flight: dict[object, list[str]] = {}  # node → tiers of its tasks in flight (FIFO)
        self._node_tier: dict[object, str] = {}  # connected node → its tier label
        self._warned = False
        self._metric_names: set[str] = set()
        self._handlers: Mapping[EventKind, Callable[[Mapping[str, Any]], None]] = {
            EventKind.DISPATCH: self._on_dispatch,
            EventKind.UPDATE: self._on_update,
            EventKind.INVALID: self._on_invalid,
            EventKind.ERROR: self._on_error,
            EventKind.STEP: self._on_step,
            EventKind.EVAL: self._on_eval,
            EventKind.FEDERATED_EVAL: self._on_federated_eval,
            EventKind.NODE: self._on_node,
            EventKind.STEP_REFUSED: self._on_step_refused,
            EventKind.GROUP_CLOSE: self._on_group_close,
            EventKind.PRIVACY: lambda f: self.set_privacy(f.get("epsilon"), f.get("delta")),  # type: ignore[arg-type]
        }
        self._define()

    # -- series ---------------------------------------------------------------------------

    def _define(self) -> None:
        r = self.registry
        tier = ("device_tier",)
        self.build_info = Gauge(
            "fl_build_info",
            "Build of the ServerApp (value is always 1)",
            ("version", "flwr_version", "python_version"),
            registry=r,
        )
        self.build_info.labels(
            _package_version("fedbuff-deploy"), _package_version("flwr"), platform.python_version()
        ).set(1)
        # run constants (describe_run)
        self.buffer_size = Gauge("fl_buffer_size", "Updates per buffer flush (K)", registry=r)
        self.max_staleness = Gauge(
            "fl_max_staleness", "Configured max-staleness in versions (0 = no limit)", registry=r
        )
        self.concurrency = Gauge("fl_concurrency", "Configured tasks in flight", registry=r)
        # model and buffer
        self.model_version = Gauge("fl_model_version", "Version (server steps) of the global model", registry=r)
        self.server_steps = Counter("fl_server_steps", "Server optimizer steps taken", registry=r)
        self.buffer_fill = Gauge("fl_buffer_fill", "Updates waiting in the buffer that flushes next", registry=r)
        self.buffer_fill_duration = Histogram(
            "fl_buffer_fill_duration_seconds",
            "Time to fill a buffer: seconds between consecutive server steps (the first from run start)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.aggregation_duration = Histogram(
            "fl_aggregation_duration_seconds",
            "Time the strategy took to take in the update that completed a buffer, including the step",
            buckets=FAST_SECONDS_BUCKETS,
            registry=r,
        )
        # tasks and nodes
        self.dispatched = Counter("fl_tasks_dispatched", "Train tasks pushed to nodes", tier, registry=r)
        self.in_flight = Gauge("fl_tasks_in_flight", "Train tasks pushed and not yet answered", tier, registry=r)
        self.connected = Gauge("fl_connected_nodes", "Nodes admitted and not retired", tier, registry=r)
        self.backoffs = Counter("fl_node_backoffs", "Nodes backed off after failed replies in a row", tier, registry=r)
        self.assigned_steps = Histogram(
            "fl_assigned_local_steps",
            "Local steps the server's scheduler assigned to a task (fedcompass, compute-aware fedbuff)",
            tier,
            buckets=STEPS_BUCKETS,
            registry=r,
        )
        # FedCompass's arrival groups (strategies.compass)
        self.group_size = Histogram(
            "fl_group_size",
            "Members of an arrival group back on time when it closed",
            buckets=GROUP_BUCKETS,
            registry=r,
        )
        self.group_closes = Counter(
            "fl_group_closes", "Arrival groups closed, by why: complete or timer", ("reason",), registry=r
        )
        # replies
        self.updates = Counter("fl_updates", "Replies by what happened to them", ("outcome", *tier), registry=r)
        self.invalid = Counter("fl_invalid_updates", "Replies refused by validation", ("reason",), registry=r)
        self.stragglers = Counter(
            "fl_stragglers",
            "Late tasks: replies past the straggler deadline, or TTL expiries",
            ("reason", *tier),
            registry=r,
        )
        self.dropouts = Counter(
            "fl_dropouts", "Tasks that failed: node gone, lost, client error", ("reason", *tier), registry=r
        )
        self.staleness = Histogram(
            "fl_update_staleness",
            "Staleness on arrival (server version minus version at dispatch) of valid updates",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.round_trip = Histogram(
            "fl_round_trip_seconds",
            "Dispatch to reply, measured by the server",
            tier,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.train_seconds = Histogram(
            "fl_client_train_seconds",
            "Local training time reported by the client",
            ("device_tier", "device_kind"),
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.update_norm = Histogram(
            "fl_update_norm", "L2 norm of valid update deltas", buckets=NORM_BUCKETS, registry=r
        )
        self.dropped_fields = Counter(
            "fl_reply_fields_dropped",
            "Reported fields of valid replies dropped for a wrong type, a non-finite value or a value out of range",
            ("field",),
            registry=r,
        )
        self.weight_clips = Counter(
            "fl_example_weight_clips", "Updates whose example weight was cut to max-example-weight", registry=r
        )
        # server steps
        self.step_norm = Histogram(
            "fl_step_norm", "L2 norm of each server step taken (new model − old)", buckets=NORM_BUCKETS, registry=r
        )
        self.refused_steps = Counter(
            "fl_steps_refused",
            "Server steps the step guard refused (buffer dropped, model kept)",
            ("reason",),
            registry=r,
        )
        self.payload_bytes = Counter(
            "fl_payload_bytes",
            "Array payload bytes: down = model sent, up = valid update received",
            ("direction",),
            registry=r,
        )
        # evaluation and privacy
        self.eval_loss = Gauge("fl_eval_loss", "Central evaluation loss of the latest evaluated model", registry=r)
        self.eval_accuracy = Gauge(
            "fl_eval_accuracy_ratio", "Central evaluation accuracy (0..1) of the latest evaluated model", registry=r
        )
        self.eval_version = Gauge("fl_eval_model_version", "Model version of the latest evaluation", registry=r)
        self.tier_accuracy = Gauge(
            "fl_eval_tier_accuracy_ratio",
            "Accuracy (0..1) of the latest evaluated model on the tier's own held-out data",
            tier,
            registry=r,
        )
        self.tier_accuracy_gap = Gauge(
            "fl_eval_tier_accuracy_gap_ratio",
            "Largest accuracy difference between two tiers in the latest evaluation",
            registry=r,
        )
        self.federated_value = Gauge(
            "fl_federated_eval_value",
            "Federated evaluation: the metric's example-weighted mean over the nodes that answered",
            ("metric",),
            registry=r,
        )
        self.federated_tier_accuracy = Gauge(
            "fl_federated_eval_tier_accuracy_ratio",
            "Federated evaluation accuracy (0..1) over the tier's nodes' own held-out data",
            tier,
            registry=r,
        )
        self.federated_version = Gauge(
            "fl_federated_eval_model_version", "Model version of the latest federated evaluation", registry=r
        )
        self.federated_failed = Counter(
            "fl_federated_eval_failed_total",
            "Evaluate tasks not answered in time, or answered with an error or an invalid reply",
            registry=r,
        )
        self.participation = Gauge(
            "fl_tier_participation_ratio", "The tier's share (0..1) of all accepted updates so far", tier, registry=r
        )
        self.epsilon = Gauge("fl_privacy_epsilon", "Privacy spent so far (ε of (ε, δ)-DP)", registry=r)
        self.delta = Gauge("fl_privacy_delta", "δ of the reported (ε, δ)-DP guarantee", registry=r)
        self.client_epsilon = Gauge(
            "fl_client_dp_epsilon",
            "Largest DP-SGD ε a client of the tier reported (0 while DP-SGD is off)",
            tier,
            registry=r,
        )
        # the exporter itself
        self.dropped = Counter(
            "fl_dropped_observations",
            "Values not observed because they were NaN, ±Inf or not numbers",
            ("metric",),
            registry=r,
        )
        self.exporter_errors = Counter("fl_exporter_errors", "Events the exporter failed to handle", registry=r)

        # Children are created up front: every series exists (at 0) from the first scrape,
        # so rate() and alerts see a counter start, and hot paths skip .labels().
        self._updates = {(o, t): self.updates.labels(o, t) for o in OUTCOMES for t in TIERS}
        self._invalid = {reason: self.invalid.labels(reason) for reason in INVALID_REASONS}
        self._stragglers = {(r_, t): self.stragglers.labels(r_, t) for r_ in STRAGGLER_REASONS for t in TIERS}
        self._dropouts = {(r_, t): self.dropouts.labels(r_, t) for r_ in DROPOUT_REASONS for t in TIERS}
        self._dispatched = {t: self.dispatched.labels(t) for t in TIERS}
        self._assigned_steps = {t: self.assigned_steps.labels(t) for t in TIERS}
        self._group_closes = {reason: self.group_closes.labels(reason) for reason in CLOSE_REASONS}
        self._in_flight_g = {t: self.in_flight.labels(t) for t in TIERS}
        self._connected_g = {t: self.connected.labels(t) for t in TIERS}
        self._backoffs = {t: self.backoffs.labels(t) for t in TIERS}
        self._bytes = {d: self.payload_bytes.labels(d) for d in DIRECTIONS}
        self._dropped_fields = {name: self.dropped_fields.labels(name) for name in DROPPED_FIELDS}
        self._refused_steps = {reason: self.refused_steps.labels(reason) for reason in STEP_GUARD_REASONS}
        self._client_epsilon = {t: self.client_epsilon.labels(t) for t in TIERS}
        self._participation = {t: self.participation.labels(t) for t in TIERS}
        self._accepted_by_tier: dict[str, int] = dict.fromkeys(TIERS, 0)
        self._client_epsilon_max: dict[str, float] = {}
        self._round_trip: dict[str, Any] = {}
        self._train: dict[tuple[str, str], Any] = {}
        self._dropped: dict[str, Any] = {}

    # -- public ---------------------------------------------------------------------------

    def event(self, kind: EventKind, **fields: object) -> None:
        """Update the series one loop event (schema: ``server_app.events``) moves."""
        handler = self._handlers.get(kind)
        if handler is None:
            return
        try:
            handler(fields)
        except Exception:  # metrics must never stop training
            self.exporter_errors.inc()
            if not self._warned:
                self._warned = True
                log.exception("metrics exporter failed on a %r event (further failures only counted)", kind)

    def describe_run(
        self, *, buffer_size: int | None = None, max_staleness: int | None = None, concurrency: int | None = None
    ) -> None:
        """Publish the run's constants that alerts compare against (buffer size, max staleness)."""
        for gauge, value, name in (
            (self.buffer_size, buffer_size, "fl_buffer_size"),
            (self.max_staleness, max_staleness, "fl_max_staleness"),
            (self.concurrency, concurrency, "fl_concurrency"),
        ):
            if value is not None:
                self._set(gauge, value, name)

    def set_privacy(self, epsilon: float, delta: float | None = None) -> None:
        """Publish the privacy spent so far (ε, and δ when given); non-finite values are dropped."""
        self._set(self.epsilon, epsilon, "fl_privacy_epsilon")
        if delta is not None:
            self._set(self.delta, delta, "fl_privacy_delta")

    def start(self) -> str:
        """Serve ``/metrics`` on ``config.address:config.port``; return the actual URL.

        Raises ``OSError`` when the address cannot be bound (port taken), ``RuntimeError``
        when already started.
        """
        if self._server is not None:
            raise RuntimeError(f"metrics exporter already serving at {self.url}")
        self._server, self._thread = start_http_server(self.config.port, self.config.address, registry=self.registry)
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        self.url = f"http://{host}:{port}/metrics"
        return self.url

    @property
    def port(self) -> int | None:
        """The port actually bound (``None`` before :meth:`start`)."""
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving (idempotent); the registry keeps its values."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # -- event handlers -------------------------------------------------------------------

    def _on_dispatch(self, f: Mapping[str, Any]) -> None:
        tier = tier_of(f.get("tier"))
        self._dispatched[tier].inc()
        self._in_flight_g[tier].inc()
        self._in_flight.setdefault(f.get("node"), []).append(tier)
        self._add_bytes("down", f.get("bytes"))
        if "local_steps" in f:
            self._observe(self._assigned_steps[tier], f["local_steps"], "fl_assigned_local_steps")

    def _on_group_close(self, f: Mapping[str, Any]) -> None:
        reason = f.get("reason")
        if reason in self._group_closes:
            self._group_closes[reason].inc()
        self._observe(self.group_size, f.get("arrived"), "fl_group_size")

    def _on_update(self, f: Mapping[str, Any]) -> None:
        tier = tier_of(f.get("tier"))
        node = f.get("node")
        self._task_done(node)
        self._learn_tier(node, tier)
        outcome = f.get("outcome")
        if outcome == "accepted":
            self._accept(tier)
        if outcome in UPDATE_OUTCOMES:
            self._updates[(outcome, tier)].inc()
        else:  # an outcome this exporter does not know: counted, bounded, as "other"
            self.updates.labels("other", tier).inc()
        self._observe(self.staleness, f.get("staleness"), "fl_update_staleness")
        self._reply_timing(f.get("round_trip"), tier)
        if "train_seconds" in f:
            key = (tier, device_kind_of(f.get("device_kind")))
            child = self._train.get(key)
            if child is None:
                child = self._train[key] = self.train_seconds.labels(*key)
            self._observe(child, f["train_seconds"], "fl_client_train_seconds")
        self._observe(self.update_norm, f.get("norm"), "fl_update_norm")
        epsilon = _finite(f.get("dp_epsilon")) if "dp_epsilon" in f else None
        if epsilon is not None and epsilon > self._client_epsilon_max.get(tier, 0.0):
            self._client_epsilon_max[tier] = epsilon
            self._client_epsilon[tier].set(epsilon)
        self._add_bytes("up", f.get("bytes"))
        if "buffer_fill" in f:
            self._set(self.buffer_fill, f["buffer_fill"], "fl_buffer_fill")
        dropped = f.get("dropped_fields")
        for name in dropped if isinstance(dropped, list | tuple) else ():
            self._dropped_fields[name if name in self._dropped_fields else OTHER].inc()
        if f.get("weight_clipped") is True:
            self.weight_clips.inc()

    def _on_invalid(self, f: Mapping[str, Any]) -> None:
        tier = tier_of(f.get("tier"))
        self._task_done(f.get("node"))
        self._updates[("invalid", tier)].inc()
        reason = f.get("reason")
        self._invalid[reason if reason in self._invalid else "other"].inc()
        self._reply_timing(f.get("round_trip"), tier)

    def _on_error(self, f: Mapping[str, Any]) -> None:
        tier = tier_of(f.get("tier"))
        self._task_done(f.get("node"))
        self._updates[("error", tier)].inc()
        reason = f.get("reason")
        if reason == TTL_REASON:
            self._stragglers[("ttl", tier)].inc()
        else:
            self._dropouts[(reason if reason in DROPOUT_REASONS else OTHER_ERROR, tier)].inc()

    def _on_step(self, f: Mapping[str, Any]) -> None:
        self.server_steps.inc()
        self._set(self.model_version, f.get("version"), "fl_model_version")
        self._observe(self.aggregation_duration, f.get("aggregate_seconds"), "fl_aggregation_duration_seconds")
        self._observe(self.step_norm, f.get("step_norm"), "fl_step_norm")
        now = _finite(f.get("time"))
        if now is not None:
            self._observe(
                self.buffer_fill_duration, now - (self._last_step_time or 0.0), "fl_buffer_fill_duration_seconds"
            )
            self._last_step_time = now

    def _on_step_refused(self, f: Mapping[str, Any]) -> None:
        reason = f.get("reason")
        if reason in self._refused_steps:
            self._refused_steps[reason].inc()
        else:  # a reason this exporter does not know: counted, bounded, as "other"
            self.refused_steps.labels("other").inc()

    def _on_eval(self, f: Mapping[str, Any]) -> None:
        self._set(self.eval_loss, f.get("loss"), "fl_eval_loss")
        self._set(self.eval_accuracy, f.get("accuracy"), "fl_eval_accuracy_ratio")
        self._set(self.eval_version, f.get("version"), "fl_eval_model_version")
        by_tier = f.get("accuracy_by_tier")
        if isinstance(by_tier, Mapping):
            # A tier's series appears with its first accuracy: 0 would read as "learned nothing".
            for name, value in by_tier.items():
                if name not in TIERS or name == "unknown":
                    continue
                if (accuracy := _finite(value)) is None:
                    self._drop("fl_eval_tier_accuracy_ratio")
                else:
                    self.tier_accuracy.labels(name).set(accuracy)
        self._set(self.tier_accuracy_gap, f.get("accuracy_gap"), "fl_eval_tier_accuracy_gap_ratio")

    def _on_federated_eval(self, f: Mapping[str, Any]) -> None:
        """Each metric by name (at most :data:`MAX_METRIC_LABELS` names: the task declares them),
        accuracy per tier, and the failed evaluate tasks."""
        self._set(self.federated_version, f.get("version"), "fl_federated_eval_model_version")
        metrics = f.get("metrics")
        if isinstance(metrics, Mapping):
            for name, value in metrics.items():
                known = name in self._metric_names or len(self._metric_names) < MAX_METRIC_LABELS
                if not isinstance(name, str) or not known or (number := _finite(value)) is None:
                    self._drop("fl_federated_eval_value")
                    continue
                self._metric_names.add(name)
                self.federated_value.labels(name).set(number)
        by_tier = f.get("metrics_by_tier")
        if isinstance(by_tier, Mapping):
            for name, values in by_tier.items():
                accuracy = _finite(values.get("accuracy")) if isinstance(values, Mapping) else None
                if name in TIERS and name != "unknown" and accuracy is not None:
                    self.federated_tier_accuracy.labels(name).set(accuracy)
        failed = f.get("failed")
        if isinstance(failed, int) and not isinstance(failed, bool) and failed > 0:
            self.federated_failed.inc(failed)

    def _on_node(self, f: Mapping[str, Any]) -> None:
        """``admitted`` adds a connected node; ``retired`` (or ``left``) removes it;
        ``backed-off`` counts a back-off (the node stays connected)."""
        node, state = f.get("node"), f.get("state")
        if state == "backed-off":
            self._backoffs[tier_of(f.get("tier"))].inc()
        elif state == "admitted" and node not in self._node_tier:
            tier = self._node_tier[node] = tier_of(f.get("tier"))
            self._connected_g[tier].inc()
        elif state in ("retired", "left") and node in self._node_tier:
            self._connected_g[self._node_tier.pop(node)].dec()

    # -- helpers --------------------------------------------------------------------------

    def _accept(self, tier: str) -> None:
        """One more accepted update of ``tier``: every tier's share moves."""
        self._accepted_by_tier[tier] += 1
        total = sum(self._accepted_by_tier.values())
        for name, count in self._accepted_by_tier.items():
            self._participation[name].set(count / total)

    def _task_done(self, node: object) -> None:
        """A task of ``node`` ended: release the in-flight slot it took at dispatch."""
        tiers = self._in_flight.get(node)
        if not tiers:
            return
        self._in_flight_g[tiers.pop(0)].dec()
        if not tiers:
            del self._in_flight[node]

    def _learn_tier(self, node: object, tier: str) -> None:
        """A reply told a connected node's tier: move it out of ``unknown``."""
        old = self._node_tier.get(node)
        if old is not None and old != tier and tier != "unknown":
            self._connected_g[old].dec()
            self._connected_g[tier].inc()
            self._node_tier[node] = tier

    def _reply_timing(self, round_trip: object, tier: str) -> None:
        if round_trip is None:
            return
        value = _finite(round_trip)
        if value is None:
            self._drop("fl_round_trip_seconds")
            return
        child = self._round_trip.get(tier)
        if child is None:
            child = self._round_trip[tier] = self.round_trip.labels(tier)
        child.observe(value)
        deadline = self.config.straggler_deadline_seconds
        if deadline and value > deadline:
            self._stragglers[("deadline", tier)].inc()

    def _add_bytes(self, direction: str, value: object) -> None:
        if value is None:
            return
        number = _finite(value)
        if number is None or number < 0:
            self._drop("fl_payload_bytes_total")
        else:
            self._bytes[direction].inc(number)

    def _observe(self, metric: Any, value: object, name: str) -> None:
        self._record(metric.observe, value, name)

    def _set(self, gauge: Gauge, value: object, name: str) -> None:
        self._record(gauge.set, value, name)

    def _record(self, apply: Callable[[float], None], value: object, name: str) -> None:
        """Apply a finite value; count a non-finite one as dropped; skip a missing one."""
        if value is None:
            return
        number = _finite(value)
        if number is None:
            self._drop(name)
        else:
            apply(number)

    def _drop(self, name: str) -> None:
        child = self._dropped.get(name)
        if child is None:
            child = self._dropped[name] = self.dropped.labels(name)
        child.inc()
