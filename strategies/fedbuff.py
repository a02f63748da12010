"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

The weights, the delta's sign and the buffer follow FLSim (facebookresearch/FLSim, checked
at 7311f2d); how our pseudo-gradient's scale differs from FLSim's is said on :class:`FedBuff`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from strategies.base import Arrays, AsyncStrategy, ClientUpdate, FlushError, Outcome, Receipt, StepOutcome
from strategies.buffer import WeightedSumBuffer
from strategies.guard import noise_norm_bound
from strategies.scheduling import ComputeAwareScheduler
from strategies.server_opt import ServerOptimizer, server_optimizer
from strategies.weights import clip_weight, example_weight, staleness_limit, staleness_weight

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions

PRIVACY_BUDGET = "privacy-budget"  # flush error: releasing it would exceed the ε budget

BUFFER_NORMALIZATIONS = ("count", "weight")


class FedBuff(AsyncStrategy):
    """Accumulate ``w_i·Δ_i`` until K updates, then step the server optimizer on the buffer.

    ``w_i = min(e(n_i), max-example-weight)·s(τ_i)`` (times ``stale-factor`` past
    ``max-staleness`` under ``stale-policy = "down-weight"``; under ``"drop"`` such updates are
    STALE). ``n_i`` is the client's own claim: the clip bounds what one client can weigh
    against a typical one, whatever it claims (FLSim's weighted reducer clamps the same way).

    The buffer is divided by K by default (``buffer-normalization = "count"``): the
    pseudo-gradient is a mean, so ``server-lr`` means the same for every K, and K =
    concurrency from one model with equal weights is FedAvg. ``"weight"`` divides by ``Σw``
    instead, a weighted mean (with linear example weights: example-weighted FedAvg); it
    cancels staleness down-weighting whenever a whole buffer is equally stale, so a stale
    buffer would move the model as far as a fresh one. A buffer whose ``Σw`` is 0 (threshold
    weights) applies a zero pseudo-gradient.

    FLSim's FedBuff differs by a constant factor: its reducer is a weighted *sum* (no ÷K) and
    it normalises the staleness weight at τ = 1 (``avg_staleness = 1``), ours at τ = 0, so its
    pseudo-gradient is ``K / s(1)`` times ours: √2·K with the paper's polynomial weight
    (a = 0.5), K with constant weights. A server SGD step, with or without momentum, absorbs
    that exactly (our ``server-lr`` = FLSim's lr × K / s(1)); adaptive optimizers are nearly
    scale-invariant, so there it holds only approximately (τ, eps and weight decay see the
    scale). FLSim's FedAdam is torch Adam, ours Reddi et al.'s (:mod:`strategies.server_opt`).

    At most one update per client per buffer: a fast client's second update waits in the
    next buffer (itself a running sum) instead of being thrown away; only when
    ``max_pending_buffers`` buffers already hold that client is it refused as DUPLICATE.
    """

    max_pending_buffers = 4

    def __init__(self, initial: Arrays, options: StrategyOptions, privacy: FlushPrivacy | None = None) -> None:
        super().__init__(initial, options.max_step_norm)
        self.options = options
        self.privacy = privacy
        self._staleness_weight = staleness_weight(options)
        self._example_weight = example_weight(options)
        self._optimizer = server_optimizer(options)
        self._buffers: deque[WeightedSumBuffer] = deque([self._new_buffer()])
        if options.compute_aware:  # each node's local steps from its measured speed
            self.scheduler = ComputeAwareScheduler(
                options.compass_min_steps, options.compass_max_steps, options.compass_speed_momentum
            )

    @property
    def buffer_fill(self) -> int:
        """How many updates wait in the buffer that flushes next."""
        return len(self._buffers[0])

    @property
    def optimizer(self) -> ServerOptimizer:
        """The server optimizer (its state is part of :meth:`state_dict`)."""
        return self._optimizer

    def _optimizer_state(self) -> Mapping[str, object]:
        return self._optimizer.state_dict()

    def _load_optimizer_state(self, state: dict[str, object]) -> None:
        """Load the server optimizer's state and start from an empty buffer.

        A partly filled buffer is never part of a checkpoint: keeping individual updates
        across a crash would mean storing them, and under secure aggregation their masks
        are single-use, so they could not be unmasked by a restarted server anyway.
        """
        if state:
            self._optimizer.load_state_dict(state)  # type: ignore[arg-type]
        self._buffers = deque([self._new_buffer()])

    def receive(self, update: ClientUpdate) -> Receipt:
        factor = staleness_limit(self.options, update.staleness)
        if factor is None:
            return Receipt(Outcome.STALE)
        buffer = self._free_buffer(self._buffers, update.client_id)
        if buffer is None:
            return Receipt(Outcome.DUPLICATE)
        weight, clipped = self._weigh(update, factor)
        if not self._add(buffer, update, weight):
            return Receipt(Outcome.STALE, weight_clipped=clipped)
        if len(self._buffers[0]) < self.options.buffer_size:
            return Receipt(Outcome.ACCEPTED, weight=weight, weight_clipped=clipped)
        return Receipt(Outcome.ACCEPTED, weight=weight, step=self._step(), weight_clipped=clipped)

    def flush(self) -> StepOutcome | None:
        """Step on the head buffer now, however full; None if it is empty.

        The synchronous barrier needs it when a round ends with fewer than K updates
        (a drop-out): the round's survivors are averaged over their own count.
        """
        return self._step() if len(self._buffers[0]) else None

    def _weigh(self, update: ClientUpdate, factor: float) -> tuple[float, bool]:
        """``(w, whether its example weight was clipped)``: ``w = factor·s(τ)·min(e(n), max)``."""
        example, clipped = clip_weight(self._example_weight(update.num_examples), self.options.max_example_weight)
        return factor * self._staleness_weight(update.staleness) * example, clipped

    def _free_buffer(self, buffers: deque[WeightedSumBuffer], client_id: int) -> WeightedSumBuffer | None:
        """The first of ``buffers`` that ``client_id`` has not contributed to (a new one is
        appended when all have, up to ``max_pending_buffers``); None past that."""
        buffer = next((b for b in buffers if not b.holds(client_id)), None)
        if buffer is None and len(buffers) < self.max_pending_buffers:
            buffer = self._new_buffer()
            buffers.append(buffer)
        return buffer

    # -- what a buffer is: overridden by the secure-aggregation variant ---------------------

    def _new_buffer(self) -> WeightedSumBuffer:
        return WeightedSumBuffer()

    def _add(self, buffer: WeightedSumBuffer, update: ClientUpdate, weight: float) -> bool:
        """Add the update with ``weight``; ``False`` if it carries no weight at all."""
        buffer.add(update.client_id, update.delta, weight)
        return True

    def _drain(self, buffer: WeightedSumBuffer) -> tuple[Arrays, int, float]:
        """``(Σ w_i·Δ_i, count, Σ w_i)``; raises :class:`FlushError` if it cannot be read."""
        return buffer.flush()

    def _step(self) -> StepOutcome:
        """Apply the head buffer. It is dropped whole if it cannot be read or released
        (``flush_error``) or the step guard refuses the step (``refused``); a refused step
        also leaves the server optimizer's state as it was (its moments are copied first)."""
        buffer = self._buffers.popleft()
        if not self._buffers:
            self._buffers.append(self._new_buffer())
        return self._flush(buffer)

    def _flush(self, buffer: WeightedSumBuffer) -> StepOutcome:
        """Turn ``buffer`` (non-empty, no longer held) into one attempted server step."""
        weights = buffer.weights
        try:
            total, count, total_weight = self._drain(buffer)
        except FlushError as err:
            return StepOutcome(False, flush_error=err.reason)
        allowance = 0.0
        if self.privacy is not None:
            released = self.privacy.privatize(total, weights)
            if released is None:
                return StepOutcome(False, flush_error=PRIVACY_BUDGET)
            total = released
            std = self.privacy.averaged_std(weights, count, self.options.buffer_normalization)
            allowance = self._optimizer.reach(noise_norm_bound(std, sum(a.size for a in total)))
        before = self._optimizer.state_dict()
        outcome = self._apply(self._optimizer.step(self.model, self._normalize(total, count, total_weight)), allowance)
        if not outcome.stepped:
            self._optimizer.load_state_dict(before)
        return outcome

    def _normalize(self, total: Arrays, count: int, total_weight: float) -> Arrays:
        """Divide the drained sum by K or Σw, in place: the strategy owns it and it is dead
        after this flush, so a scaled copy would only add a float64 model to the peak."""
        if self.options.buffer_normalization == "count":
            scale = 1.0 / count
        else:
            scale = 1.0 / total_weight if total_weight > 0 else 0.0
        for s in total:
            s *= scale
        return total
