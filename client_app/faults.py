"""Deliberately broken replies, for the tests' abuse cases only (node config ``test-fault``).

Each fault breaks the reply in one way the server must refuse for a named reason; ``raise``
makes the ClientApp fail outright, and ``cycle`` walks through all of them, one per message
(starting at the node's partition id), so that a few nodes exercise every kind in a short run.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import Context, MetricRecord

MALFORMED = ("nan", "inf", "shape", "dtype", "extra-array", "huge-norm", "oversize")
CYCLE = (*MALFORMED, "raise")
FAULTS = ("", *CYCLE, "cycle")
OVERSIZE_MIN_BYTES = 1 << 20
HUGE_NORM_FACTOR = 1e6
_CYCLE_STATE = "test-fault-cycle"


class InjectedFault(RuntimeError):
    """Raised by ``test-fault="raise"``: the ClientApp fails, the SuperNode reports an error."""


def inject(fault: str, arrays: list[np.ndarray], context: Context) -> list[np.ndarray]:
    """Return ``arrays`` broken the way ``fault`` says (``""``: untouched)."""
    if fault == "cycle":
        fault = _next_in_cycle(context)
    if fault == "raise":
        raise InjectedFault("test-fault=raise: this ClientApp fails on purpose")
    arrays = list(arrays)
    first = arrays[0].copy()
    if fault == "nan":
        first.flat[0] = np.nan
    elif fault == "inf":
        first.flat[0] = np.inf
    elif fault == "shape":
        first = first[:-1]
    elif fault == "dtype":
        first = first.astype(np.float64)
    elif fault == "huge-norm":
        first = first + np.float32(HUGE_NORM_FACTOR)
    elif fault == "extra-array":
        arrays.append(np.zeros(3, np.float32))
    elif fault == "oversize":  # four times the model, and at least 1 MiB: past any sane limit
        size = max(4 * sum(a.nbytes for a in arrays), OVERSIZE_MIN_BYTES)
        arrays.append(np.zeros(size // 4, np.float32))
    arrays[0] = first
    return arrays


def _next_in_cycle(context: Context) -> str:
    """The fault for this message; the position persists in ``context.state``."""
    record = context.state.metric_records.get(_CYCLE_STATE)
    # cast: the record is this function's own, written below with an int position
    position = cast(int, record["position"]) if record is not None else int(context.node_config.get("partition-id", 0))
    context.state[_CYCLE_STATE] = MetricRecord({"position": position + 1})
    return CYCLE[position % len(CYCLE)]
