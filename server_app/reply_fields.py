"""The numbers and labels a train reply reports beside its update, checked one by one.

A reply's ``metrics`` MetricRecord carries ``num-examples`` (required: it weights the update,
so :mod:`server_app.validation` refuses the reply when it is wrong) and optional numbers the
server only reports (training loss and time, the client's DP-SGD ε); its ``device``
ConfigRecord says where the update was trained. None of the optional ones can move the model,
but each one feeds the run history and the Prometheus series, so each is checked against a
rule: the right type, finite, in range. A field that breaks its rule is dropped, the reply is
still used, and the field's name comes back in :attr:`ReportedFields.dropped` for the loop to
count. A field with no rule is not carried either (counted as ``other``): the server passes
on only what it knows how to check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedbuff import protocol
from fedbuff.protocol import NUM_EXAMPLES

OTHER = "other"
MAX_TEXT_CHARS = 64  # a device tier or kind is a short word; longer text would bloat every event


@dataclass(frozen=True)
class Bounds:
    """A closed interval a reported number must lie in (finite values only)."""

    low: float = 0.0
    high: float = math.inf

    def holds(self, value: object) -> bool:
        """Whether ``value`` is an int or float (not a bool), finite, within the interval."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and self.low <= value <= self.high


# Optional metrics of the project's ClientApp and what an honest one can report.
OPTIONAL_METRICS: Mapping[str, Bounds] = MappingProxyType(
    {
        protocol.TRAIN_LOSS: Bounds(),  # cross-entropy: never negative
        protocol.TRAIN_SECONDS: Bounds(),
        protocol.TASK_SECONDS: Bounds(),
        protocol.DP_EPSILON: Bounds(),  # an ε below 0 means nothing; +Inf is not finite either
        protocol.DP_NOISE_MULTIPLIER: Bounds(),
    }
)
TEXT_DEVICE_FIELDS = (protocol.DEVICE_TIER, protocol.DEVICE_KIND)
# Every label a dropped field can be counted under: bounded, whatever the client sends.
DROPPED_FIELDS = (*OPTIONAL_METRICS, protocol.DEVICE, OTHER)


@dataclass(frozen=True)
class ReportedFields:
    """The optional fields of a reply that passed their rules, and the names of those that did not.

    ``device`` holds ``device-tier`` / ``device-kind`` (short strings) and, when both are
    valid, ``partition-id`` / ``num-partitions`` (ints, ``0 <= id < count``).
    """

    metrics: dict[str, float]
    device: dict[str, str | int]
    dropped: tuple[str, ...]


def reported_fields(content: RecordDict) -> ReportedFields:
    """Check the optional metrics and the device record of a reply; never raises."""
    dropped: list[str] = []
    metrics: dict[str, float] = {}
    record = content.get(protocol.METRICS)
    for key, value in record.items() if isinstance(record, MetricRecord) else ():
        if key == NUM_EXAMPLES:
            continue
        bounds = OPTIONAL_METRICS.get(key)
        if bounds is None:
            dropped.append(OTHER)
        elif bounds.holds(value):
            metrics[key] = float(value)  # type: ignore[arg-type]
        else:
            dropped.append(key)
    device, device_ok = _device(content.get(protocol.DEVICE))
    if not device_ok:
        dropped.append(protocol.DEVICE)
    return ReportedFields(metrics, device, tuple(dropped))


def _device(record: object) -> tuple[dict[str, str | int], bool]:
    """The valid part of a ``device`` record, and whether all of it was valid (absent is valid)."""
    if record is None:
        return {}, True
    if not isinstance(record, ConfigRecord):
        return {}, False
    device: dict[str, str | int] = {}
    ok = True
    for key, value in record.items():
        if key in TEXT_DEVICE_FIELDS and isinstance(value, str) and len(value) <= MAX_TEXT_CHARS:
            device[key] = value
        elif key not in (protocol.PARTITION_ID, protocol.NUM_PARTITIONS):
            ok = False
    part, count = record.get(protocol.PARTITION_ID), record.get(protocol.NUM_PARTITIONS)
    if part is None and count is None:
        return device, ok
    if _count(part, low=0) and _count(count, low=1) and part < count:  # type: ignore[operator]
        device[protocol.PARTITION_ID], device[protocol.NUM_PARTITIONS] = part, count  # type: ignore[assignment]
        return device, ok
    return device, False


def _count(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
