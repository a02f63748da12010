"""The contract between the asynchronous server loop and an aggregation strategy."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Arrays = list[np.ndarray]


class Outcome(str, enum.Enum):
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
    masked_digest: bytes = b""  # SHA-256 of the vector as received, once the server computed it


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
class Receipt:
    """The strategy's answer to one update: its outcome and whether the model moved."""

    outcome: Outcome
    weight: float = 0.0
    stepped: bool = False
    flush_error: str | None = None  # the buffer this update completed was dropped, and why


class AsyncStrategy(abc.ABC):
    """An asynchronous aggregation rule that owns the global model and its version.

    The server loop stamps each task with ``version`` at dispatch, computes staleness on
    arrival and calls :meth:`receive`; the strategy decides whether the model moves.
    """

    def __init__(self, initial: Arrays) -> None:
        self._model = [np.array(a, dtype=np.float32, copy=True) for a in initial]
        self._version = 0

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

    def flush(self) -> bool:
        """Apply whatever is buffered now (the sync barrier's end of round); ``True`` if stepped."""
        return False

    def restore(self, model: Arrays, version: int, optimizer_state: Mapping[str, object] | None = None) -> None:
        """Continue from a checkpoint: the global model, its version and the optimizer state.

        Only state that survives a server restart is restored: anything accepted but not
        yet applied (a partly filled buffer) is gone, and the loop ignores replies to tasks
        dispatched before the restart. Raises ``ValueError`` if ``model`` is not shaped like
        the current one or the strategy has no use for a non-empty ``optimizer_state``.
        """
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        shapes = [np.shape(a) for a in model]
        if shapes != [a.shape for a in self._model]:
            raise ValueError(f"checkpoint model shapes {shapes} differ from this run's "
                             f"{[a.shape for a in self._model]}")
        self._restore_optimizer(dict(optimizer_state or {}))
        self._model = [np.array(a, dtype=np.float32, copy=True) for a in model]
        self._version = int(version)

    def _restore_optimizer(self, state: dict[str, object]) -> None:
        """Load server-optimizer state; strategies without an optimizer accept none."""
        if state:
            raise ValueError(f"{type(self).__name__} has no server optimizer to restore state into")

    def _commit(self, model: Arrays) -> None:
        self._model = [np.asarray(a, dtype=np.float32) for a in model]
        self._version += 1
