"""The contract between the asynchronous server loop and an aggregation strategy."""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np

from strategies.compass import GroupClose
from strategies.guard import check_step
from strategies.scheduling import TaskScheduler

Arrays = list[np.ndarray]


class Outcome(enum.StrEnum):
    """What a strategy did with one client update (a bounded metric label set)."""

    ACCEPTED = "accepted"
    STALE = "stale"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class MaskEnvelope:
    """What the mask service needs to unmask one masked vector (secure aggregation)."""

    ephemeral_public: bytes
    signature: bytes
    node_key_fingerprint: str


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution, with the metadata the server computed for it.

    ``delta`` is ``model_at_dispatch - model_after_local_training`` (FLSim's sign), and
    ``staleness`` is ``version_now - version_at_dispatch``, computed by the server. With
    secure aggregation ``delta`` is one masked uint64 ring vector and ``mask`` says how
    to unmask it.
    """

    client_id: int
    delta: Arrays
    num_examples: int
    staleness: int
    mask: MaskEnvelope | None = None


class FlushError(Exception):
    """A full buffer could not be turned into a pseudo-gradient; it is dropped.

    ``reason`` is a short, bounded label (for counters), e.g. ``unmask-refused``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class StepOutcome:
    """What became of one attempt at a server step.

    ``flush_error``: the buffer could not be read (e.g. ``unmask-refused``) and was dropped;
    ``refused``: the step guard refused the step (``guard.STEP_GUARD_REASONS``) and the buffer
    was dropped; ``norm``: the step's L2 norm when the new model was computed; ``bound``:
    the norm the guard allowed (``max-step-norm`` plus any DP noise allowance; 0: none);
    ``group``: the FedCompass arrival group whose close this was (None for other strategies).
    """

    stepped: bool
    flush_error: str | None = None
    refused: str | None = None
    norm: float | None = None
    bound: float = 0.0
    group: GroupClose | None = None


@dataclass(frozen=True)
class Receipt:
    """The strategy's answer to one update: its outcome, its weight, and the server step it
    completed (if any). ``weight_clipped``: its example weight was cut to ``max-example-weight``."""

    outcome: Outcome
    weight: float = 0.0
    step: StepOutcome | None = None
    weight_clipped: bool = False

    @property
    def stepped(self) -> bool:
        """Whether the model moved."""
        return self.step is not None and self.step.stepped

    @property
    def flush_error(self) -> str | None:
        """Why the buffer this update completed could not be read (it was dropped), if so."""
        return None if self.step is None else self.step.flush_error


class StrategyState(TypedDict):
    """A strategy's checkpointable state (:meth:`AsyncStrategy.state_dict`)."""

    model: Arrays
    version: int
    optimizer: NotRequired[Mapping[str, object]]


class AsyncStrategy(abc.ABC):
    """An asynchronous aggregation rule that owns the global model and its version.

    The server loop stamps each task with ``version`` at dispatch, computes staleness on
    arrival and calls :meth:`receive`; the strategy decides whether the model moves.
    """

    def __init__(self, initial: Arrays, max_step_norm: float = 0.0) -> None:
        """``max_step_norm`` bounds the L2 norm of every server step (0: finiteness only)."""
        self._model = [np.array(a, dtype=np.float32, copy=True) for a in initial]
        self._version = 0
        self.max_step_norm = max_step_norm
        # what each task carries (strategies.scheduling); the loop asks it at every dispatch
        self.scheduler = TaskScheduler()

    @property
    def model(self) -> Arrays:
        """The current global model (do not modify in place)."""
        return self._model

    @property
    def version(self) -> int:
        """How many server steps the global model has taken."""
        return self._version

    @property
    def buffer_fill(self) -> int:
        """Updates accepted but not yet applied (0 for strategies without a buffer)."""
        return 0

    @abc.abstractmethod
    def receive(self, update: ClientUpdate) -> Receipt:
        """Take one validated update; step the model when the rule says so."""

    def flush(self) -> StepOutcome | None:
        """Apply whatever is buffered now (the sync barrier's end of round); None if nothing was."""
        return None

    def tick(self, now: float) -> list[StepOutcome]:
        """Make the decisions due at clock time ``now`` (FedCompass: close groups whose timer ran
        out); the loop calls it when :meth:`TaskScheduler.next_due` has come. None by default."""
        return []

    def state_dict(self) -> StrategyState:
        """What a checkpoint keeps of this strategy: the global model (not a copy: do not modify
        it), its version and the server optimizer's state (empty without one)."""
        return {"model": self._model, "version": self._version, "optimizer": self._optimizer_state()}

    def load_state_dict(self, state: StrategyState) -> None:
        """Continue from a checkpoint's :meth:`state_dict`.

        Only state that survives a server restart is restored: anything accepted but not
        yet applied (a partly filled buffer) is gone, and the loop ignores replies to tasks
        dispatched before the restart. Raises ``ValueError`` if the model is not shaped like
        the current one or the strategy has no use for a non-empty optimizer state.
        """
        model, version = state["model"], state["version"]
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        shapes = [np.shape(a) for a in model]
        if shapes != [a.shape for a in self._model]:
            raise ValueError(
                f"checkpoint model shapes {shapes} differ from this run's {[a.shape for a in self._model]}"
            )
        self._load_optimizer_state(dict(state.get("optimizer") or {}))
        self._model = [np.array(a, dtype=np.float32, copy=True) for a in model]
        self._version = int(version)

    def _optimizer_state(self) -> Mapping[str, object]:
        """The server optimizer's state; strategies without one have none."""
        return {}

    def _load_optimizer_state(self, state: dict[str, object]) -> None:
        """Load server-optimizer state; strategies without an optimizer accept none."""
        if state:
            raise ValueError(f"{type(self).__name__} has no server optimizer to restore state into")

    def _apply(self, model: Arrays, noise_allowance: float = 0.0) -> StepOutcome:
        """Commit ``model`` as the next version if the step guard lets it through
        (:func:`strategies.guard.check_step`); otherwise leave model and version as they are.

        ``noise_allowance`` widens a non-zero ``max_step_norm`` by how far the step's DP
        noise can honestly move the model: the bound is on what clients can steer, not on noise.
        """
        new = [np.asarray(a, dtype=np.float32) for a in model]  # checked as it would be stored
        bound = self.max_step_norm + noise_allowance if self.max_step_norm else 0.0
        check = check_step(self._model, new, bound)
        norm = check.norm if math.isfinite(check.norm) else None
        if check.refused is not None:
            return StepOutcome(False, refused=check.refused, norm=norm, bound=bound)
        self._model = new
        self._version += 1
        return StepOutcome(True, norm=norm, bound=bound)
