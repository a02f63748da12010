"""The loop's event stream: one schema for the run history and the metrics exporter.

Every event is ``sink.event(kind, **fields)`` with a :class:`EventKind`; its fields have one
typed shape per kind (:data:`SHAPES`, checked by the tests against real runs). ``time``
(seconds since the run started) is always present, ``tier`` is always a server-side label
(``stats.TIER_LABELS`` or ``unknown``), never a client-supplied string. Kinds and their other
fields:

- ``dispatch``: node, tier, version, bytes (model payload), in_flight, local_steps (the
  scheduler's steps for this task; only when it planned them: fedcompass, compute-aware fedbuff)
- ``update``: node, tier, outcome (accepted | stale | duplicate), staleness, weight,
  round_trip, train_seconds (when validly reported), bytes, norm (absent under secure
  aggregation), buffer_fill, device_kind, dp_epsilon (the client's DP-SGD ε so far, when
  DP-SGD is on), partition and partitions (the node's partition id and count, when it reports
  them), dropped_fields (reported fields the server dropped, ``reply_fields.DROPPED_FIELDS``;
  only when some were), weight_clipped (true when its example weight was cut to
  ``max-example-weight``; only then)
- ``invalid``: node, tier, reason (``validation.REJECTION_REASONS``), round_trip (no node,
  tier or round_trip for ``unknown-task``: a reply to no task in flight)
- ``error``: node, tier, reason (``loop.ERROR_REASONS`` values or ``lost``)
- ``step``: version, in_flight, accepted, refused, staleness_mean, aggregate_seconds, step_norm
  (L2 norm of the step taken)
- ``step-refused``: version (the model's, unchanged), reason (``guard.STEP_GUARD_REASONS``),
  step_norm (absent when non-finite): the step guard dropped a buffer
- ``eval``: version, metrics (``{name: value}``: the task's metrics on the server's held-out
  data; empty when the server holds none), loss and accuracy (where the task has them);
  accuracy_by_tier (``{tier: accuracy}`` on each tier's own held-out data) and accuracy_gap
  (largest difference, null with one tier) once tiers are known
- ``federated-eval``: version, metrics (``{name: value}``, example-weighted means over the nodes
  that answered, each on its own held-out split), metrics_by_tier (``{tier: {name: value}}``),
  nodes (answered), examples (held-out examples behind the means), failed (asked and not
  answered in time, or an error or invalid reply): one federated evaluation, once complete
- ``node``: node, tier, state (admitted | left | retired | backed-off), online
- ``privacy``: epsilon, delta (user-level DP spent so far, after each released flush)
- ``resume``: version, accepted, discarded_buffered, abandoned_in_flight (a resumed run)
- ``stop``: reason (why the run stopped), in_flight (tasks dispatched and not answered, abandoned):
  every ``dispatch`` ends as an ``update``, ``invalid`` or ``error``, or is counted here
- ``flush-failed``: reason (``unmask-refused``, ``ring-overflow``, …): a full buffer was dropped
- ``group-close``: group (its id), reason (``compass.CLOSE_REASONS``: complete | timer), arrived
  (members back on time), late (members still out, whose updates go to the general buffer)
"""

# No `from __future__ import annotations` here: TypedDict must see NotRequired[...] itself
# (with string annotations Python 3.11 counts every key as required).
import enum
from collections.abc import Mapping, Sequence
from typing import NotRequired, Protocol, TypedDict


class EventKind(enum.StrEnum):
    """The kinds of event, as the run history writes them (``"event"`` of each line)."""

    DISPATCH = "dispatch"
    UPDATE = "update"
    INVALID = "invalid"
    ERROR = "error"
    STEP = "step"
    STEP_REFUSED = "step-refused"
    EVAL = "eval"
    NODE = "node"
    PRIVACY = "privacy"
    RESUME = "resume"
    STOP = "stop"
    FLUSH_FAILED = "flush-failed"
    GROUP_CLOSE = "group-close"
    FEDERATED_EVAL = "federated-eval"


class DispatchEvent(TypedDict):
    time: float
    node: int
    tier: str
    version: int
    bytes: int
    in_flight: int
    local_steps: NotRequired[int]


class UpdateEvent(TypedDict):
    time: float
    node: int
    tier: str
    outcome: str
    staleness: int
    weight: NotRequired[float]
    round_trip: NotRequired[float]
    bytes: NotRequired[int]
    buffer_fill: NotRequired[int]
    device_kind: NotRequired[str]
    train_seconds: NotRequired[float]
    norm: NotRequired[float]
    dp_epsilon: NotRequired[float]
    partition: NotRequired[int]
    partitions: NotRequired[int]
    dropped_fields: NotRequired[list[str]]
    weight_clipped: NotRequired[bool]


class InvalidEvent(TypedDict):
    time: float
    reason: str
    node: NotRequired[int]  # absent for unknown-task
    tier: NotRequired[str]
    round_trip: NotRequired[float]


class ErrorEvent(TypedDict):
    time: float
    node: int
    tier: str
    reason: str


class StepEvent(TypedDict):
    time: float
    version: int
    in_flight: int
    accepted: int
    refused: int
    staleness_mean: float
    aggregate_seconds: float
    step_norm: NotRequired[float]


class StepRefusedEvent(TypedDict):
    time: float
    version: int
    reason: str
    step_norm: NotRequired[float]


class EvalEvent(TypedDict):
    time: float
    version: int
    metrics: dict[str, float]
    loss: NotRequired[float]
    accuracy: NotRequired[float]
    accuracy_by_tier: NotRequired[dict[str, float]]
    accuracy_gap: NotRequired[float | None]


class NodeEvent(TypedDict):
    time: float
    node: int
    tier: str
    state: str
    online: int


class PrivacyEvent(TypedDict):
    time: float
    epsilon: float
    delta: float


class ResumeEvent(TypedDict):
    time: float
    version: int
    accepted: int
    discarded_buffered: int
    abandoned_in_flight: int


class StopEvent(TypedDict):
    time: float
    reason: str
    in_flight: int


class FlushFailedEvent(TypedDict):
    time: float
    reason: str


class GroupCloseEvent(TypedDict):
    time: float
    group: int
    reason: str
    arrived: int
    late: int


class FederatedEvalEvent(TypedDict):
    time: float
    version: int
    metrics: dict[str, float]
    metrics_by_tier: dict[str, dict[str, float]]
    nodes: int
    examples: int
    failed: int


# One shape per kind: the fields it always has (``__required_keys__``) and may have.
SHAPES: Mapping[EventKind, type] = {
    EventKind.DISPATCH: DispatchEvent,
    EventKind.UPDATE: UpdateEvent,
    EventKind.INVALID: InvalidEvent,
    EventKind.ERROR: ErrorEvent,
    EventKind.STEP: StepEvent,
    EventKind.STEP_REFUSED: StepRefusedEvent,
    EventKind.EVAL: EvalEvent,
    EventKind.NODE: NodeEvent,
    EventKind.PRIVACY: PrivacyEvent,
    EventKind.RESUME: ResumeEvent,
    EventKind.STOP: StopEvent,
    EventKind.FLUSH_FAILED: FlushFailedEvent,
    EventKind.GROUP_CLOSE: GroupCloseEvent,
    EventKind.FEDERATED_EVAL: FederatedEvalEvent,
}


def shape_errors(kind: str, fields: Mapping[str, object]) -> list[str]:
    """What is wrong with one event against its kind's shape (``[]``: nothing): an unknown kind,
    a missing required field, a field the shape does not name."""
    try:
        shape = SHAPES[EventKind(kind)]
    except ValueError:
        return [f"unknown event kind {kind!r}"]
    required: frozenset[str] = shape.__required_keys__  # type: ignore[attr-defined]
    allowed = required | shape.__optional_keys__  # type: ignore[attr-defined]
    return [f"{kind}: missing {name}" for name in sorted(required - fields.keys())] + [
        f"{kind}: unexpected {name}" for name in sorted(fields.keys() - allowed)
    ]


class EventSink(Protocol):
    """Anything that consumes loop events (the run recorder, the metrics exporter)."""

    def event(self, kind: EventKind, **fields: object) -> None: ...


class Fanout:
    """Sends each event to several sinks, in order."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def event(self, kind: EventKind, **fields: object) -> None:
        for sink in self.sinks:
            sink.event(kind, **fields)
