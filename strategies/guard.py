"""The step guard: the last check before a server step lands on the global model.

Validation looks at one update at a time, and under secure aggregation it cannot look inside
a masked one at all. What reaches the model is the step: a sum of weighted updates after the
server optimizer, which a liar inside the bounds, an optimizer that blew up or a decoding
fault can still make huge or non-finite. So every strategy computes its new model, then asks
:func:`check_step` whether ``new`` is finite and ``‖new − old‖₂ ≤ max-step-norm`` before it
commits; a refused step leaves the model, its version and the optimizer state as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strategies.chunked import squared_distance

NON_FINITE = "non-finite"  # the new model would hold a NaN or an Inf
STEP_NORM = "step-norm"  # the model would move farther than max-step-norm
STEP_GUARD_REASONS = (NON_FINITE, STEP_NORM)


@dataclass(frozen=True)
class StepCheck:
    """The L2 norm of a proposed step and, if it is refused, why (one of :data:`STEP_GUARD_REASONS`)."""

    norm: float
    refused: str | None = None


NOISE_NORM_MARGIN = 6.0  # ‖N(0, s²·I_d)‖ > s·(√d + 6) has probability below e^(−18) ≈ 1.5e-8


def noise_norm_bound(std: float, size: int) -> float:
    """An L2 norm that ``size`` coordinates of N(0, std²) noise exceed with probability < 1.5e-8.

    The norm is 1-Lipschitz in the noise and its mean is below ``std·√size``, so Gaussian
    concentration gives ``P(‖n‖ > std·(√size + t)) ≤ exp(−t²/2)``.
    """
    return std * (math.sqrt(size) + NOISE_NORM_MARGIN)


def check_step(old: list[np.ndarray], new: list[np.ndarray], max_step_norm: float) -> StepCheck:
    """Check the step ``old → new``; ``max_step_norm`` 0 checks finiteness only.

    ``old`` is finite (every committed model passed this check), so the norm is finite
    exactly when ``new`` is: one float64 pass over the model answers both questions.
    """
    norm = math.sqrt(sum(squared_distance(n, o) for n, o in zip(new, old, strict=True)))
    if not math.isfinite(norm):
        return StepCheck(norm, NON_FINITE)
    if max_step_norm and norm > max_step_norm:
        return StepCheck(norm, STEP_NORM)
    return StepCheck(norm)
