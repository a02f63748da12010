"""Central evaluation: the task's metrics on the held-out data the server may hold (the task's
:class:`~fedbuff.task.CentralData`), overall and, for accuracy, on each device tier's own
held-out data (the fairness report, docs/heterogeneity.md).

Which held-out rows are a tier's is the task's to say (``CentralData.tier_weights``); the server
learns which partition has which tier from replies (``update`` events carry the reporting node's
tier, partition id and partition count). Tiers whose nodes never got an update accepted have no
held-out data yet and are left out. A task without central data (a deployment: the server holds
no data) is evaluated by nobody here: its evaluations carry no metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedbuff.task import CentralData, Task
from server_app.events import EventKind
from server_app.stats import TIER_LABELS


class TierHoldout:
    """Per-tier weights over the held-out rows; an event sink that learns the tiers."""

    def __init__(self, central: CentralData | None) -> None:
        self.central = central
        self._tier_of: dict[int, str] = {}
        self._num_partitions: int | None = None
        self._weights: Mapping[str, np.ndarray] | None = None

    def event(self, kind: EventKind, **fields: object) -> None:
        """Learn ``partition -> tier`` from ``update`` events; ignore everything else."""
        if kind != EventKind.UPDATE:
            return
        tier, part, count = fields.get("tier"), fields.get("partition"), fields.get("partitions")
        if tier not in TIER_LABELS or not isinstance(part, int) or not isinstance(count, int):
            return
        if count != self._num_partitions:  # a different federation layout: start over
            self._num_partitions, self._tier_of = count, {}
        if self._tier_of.get(part) != tier:
            self._tier_of[part] = tier
            self._weights = None

    def weights(self) -> Mapping[str, np.ndarray]:
        """Each known tier's weight per held-out row (not normalised; rows of other tiers 0)."""
        if self._weights is None:
            known = self.central is not None and self.central.tier_weights is not None and self._tier_of
            assert self._num_partitions is not None or not known
            self._weights = (
                self.central.tier_weights(dict(self._tier_of), self._num_partitions)  # type: ignore[union-attr,misc,arg-type]
                if known
                else {}
            )
        return self._weights

    def accuracy_by_tier(self, correct: np.ndarray) -> dict[str, float]:
        """Accuracy on each tier's held-out data, given per-row correctness of a model."""
        correct = np.asarray(correct, dtype=float)
        return {tier: float(w @ correct / w.sum()) for tier, w in self.weights().items()}


class CentralEvaluator:
    """Evaluates arrays on the task's central held-out data; remembers the last model's
    per-row accuracy so that :meth:`accuracy_by_tier` costs no second forward pass."""

    def __init__(self, task: Task, model, central: CentralData | None, holdout: TierHoldout | None = None) -> None:
        self.task = task
        self.model = model
        self.central = central
        self.holdout = holdout
        self._correct: np.ndarray | None = None

    def __call__(self, arrays: list[np.ndarray]) -> dict[str, float]:
        """The task's metrics of ``arrays`` on the central held-out data ({} without any)."""
        if self.central is None:
            return {}
        from fedbuff.model import set_weights
        from fedbuff.training import evaluate_rows, mean_metrics

        set_weights(self.model, arrays)
        rows = evaluate_rows(self.task, self.model, self.central.test)
        self._correct = rows.get("accuracy")
        return mean_metrics(rows)

    def accuracy_by_tier(self) -> dict[str, float]:
        """Accuracy of the model last passed to ``__call__`` on each known tier's held-out data."""
        if self.holdout is None or self._correct is None:
            return {}
        return self.holdout.accuracy_by_tier(self._correct)
