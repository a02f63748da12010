"""Checks a train reply before it may touch the model; every refusal has a named reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict

REJECTION_REASONS = (
    "missing-field",
    "array-count",
    "shape",
    "dtype",
    "non-finite",
    "norm",
    "num-examples",
)


@dataclass(frozen=True)
class ValidUpdate:
    """The parts of a reply the server uses, after validation."""

    delta: list[np.ndarray]
    num_examples: int
    norm: float
    metrics: dict[str, float]
    device: dict[str, str]


@dataclass(frozen=True)
class Rejection:
    """Why a reply was refused: ``reason`` is one of :data:`REJECTION_REASONS`."""

    reason: str
    detail: str


def validate_reply(
    content: RecordDict, template: list[np.ndarray], max_update_norm: float
) -> ValidUpdate | Rejection:
    """Validate a train reply against the model's layout; ``max_update_norm`` 0 disables the norm bound."""
    arrays = content.array_records.get("arrays")
    metrics = content.metric_records.get("metrics")
    if arrays is None or metrics is None or "num-examples" not in metrics:
        return Rejection("missing-field", "reply needs ArrayRecord 'arrays' and MetricRecord 'metrics' with num-examples")
    try:
        delta = arrays.to_numpy_ndarrays()
    except Exception as err:  # a malformed array payload is the sender's problem, not ours
        return Rejection("dtype", f"arrays do not deserialise: {err}")
    if len(delta) != len(template):
        return Rejection("array-count", f"expected {len(template)} arrays, got {len(delta)}")
    for i, (got, want) in enumerate(zip(delta, template)):
        if got.shape != want.shape:
            return Rejection("shape", f"array {i}: expected {want.shape}, got {got.shape}")
        if got.dtype != want.dtype:
            return Rejection("dtype", f"array {i}: expected {want.dtype}, got {got.dtype}")
        if not np.isfinite(got).all():
            return Rejection("non-finite", f"array {i} holds NaN or Inf")
    num_examples = metrics["num-examples"]
    if not isinstance(num_examples, int) or num_examples < 1:
        return Rejection("num-examples", f"num-examples must be a positive int, got {num_examples!r}")
    norm = float(np.sqrt(sum(float(np.vdot(d, d)) for d in delta)))
    if max_update_norm and not norm <= max_update_norm:
        return Rejection("norm", f"update L2 norm {norm:.3g} exceeds max-update-norm {max_update_norm}")
    device = content.config_records.get("device")
    return ValidUpdate(
        delta=delta,
        num_examples=num_examples,
        norm=norm,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        device={k: str(v) for k, v in (device or {}).items()},
    )
