"""Central evaluation on the server's held-out split: overall, and on each device tier's
own held-out data (the fairness report, docs/heterogeneity.md).

A tier's own held-out data:

- with ``partitioner=natural`` (writers / speaking roles): the held-out rows of the ids its
  clients hold;
- otherwise: the held-out rows weighted so that their labels follow the tier's pooled
  training label distribution, i.e. per-class accuracy averaged with the tier's class
  shares (the expected accuracy on fresh data drawn like the tier's).

The server learns which partition has which tier from replies (``update`` events carry
the reporting node's tier, partition id and partition count) and recomputes the
partitions from the seed, as every ClientApp does. Tiers whose nodes never got an update
accepted have no held-out data yet and are left out.
"""

from __future__ import annotations

import numpy as np

from fedbuff import run_data
from fedbuff.datasets import FederatedData
from fedbuff.partitioners import label_histogram
from fedbuff.settings import RunSettings
from server_app.events import EventKind
from server_app.stats import TIER_LABELS


class TierHoldout:
    """Per-tier weights over the held-out rows; an event sink that learns the tiers."""

    def __init__(self, settings: RunSettings, data: FederatedData) -> None:
        self.settings = settings
        self.data = data
        self._tier_of: dict[int, str] = {}
        self._num_partitions: int | None = None
        self._rows: list[np.ndarray] | None = None
        self._weights: dict[str, np.ndarray] | None = None

    def event(self, kind: EventKind, **fields: object) -> None:
        """Learn ``partition -> tier`` from ``update`` events; ignore everything else."""
        if kind != EventKind.UPDATE:
            return
        tier, part, count = fields.get("tier"), fields.get("partition"), fields.get("partitions")
        if tier not in TIER_LABELS or not isinstance(part, int) or not isinstance(count, int):
            return
        if count != self._num_partitions:  # a different federation layout: start over
            self._num_partitions, self._rows, self._tier_of = count, None, {}
        if self._tier_of.get(part) != tier:
            self._tier_of[part] = tier
            self._weights = None

    def weights(self) -> dict[str, np.ndarray]:
        """Each known tier's weight per held-out row (not normalised; rows of other tiers 0)."""
        if self._weights is None:
            self._weights = self._compute() if self._tier_of else {}
        return self._weights

    def accuracy_by_tier(self, correct: np.ndarray) -> dict[str, float]:
        """Accuracy on each tier's held-out data, given per-row correctness of a model."""
        correct = np.asarray(correct, dtype=float)
        return {tier: float(w @ correct / w.sum()) for tier, w in self.weights().items()}

    def _compute(self) -> dict[str, np.ndarray]:
        assert self._num_partitions is not None
        if self._rows is None:
            self._rows = run_data.all_client_rows(self.settings, self.data, self._num_partitions)
        test = self.data.test
        out = {}
        for tier in sorted(set(self._tier_of.values())):
            rows = np.concatenate([self._rows[p] for p, t in self._tier_of.items() if t == tier])
            if self.settings.partitioner == "natural":
                assert self.data.train_ids is not None and self.data.test_ids is not None
                weight = np.isin(self.data.test_ids, np.unique(self.data.train_ids[rows])).astype(float)
            else:
                share = label_histogram(self.data.train.labels[rows], self.data.num_classes)
                held_out = np.bincount(test.labels, minlength=self.data.num_classes).astype(float)
                per_class = np.divide(share, held_out, out=np.zeros_like(share), where=held_out > 0)
                weight = per_class[test.labels]
            if weight.sum() > 0:
                out[tier] = weight
        return out


class CentralEvaluator:
    """Evaluates arrays on the held-out split; remembers the last model's per-row
    correctness so that :meth:`accuracy_by_tier` costs no second forward pass."""

    def __init__(self, model, data: FederatedData, holdout: TierHoldout | None = None) -> None:
        self.model = model
        self.test = data.test
        self.holdout = holdout
        self._correct: np.ndarray | None = None

    def __call__(self, arrays: list[np.ndarray]) -> tuple[float, float]:
        """Loss and accuracy of ``arrays`` on the whole held-out split."""
        from fedbuff.model import evaluate_rows, set_weights

        set_weights(self.model, arrays)
        loss, self._correct = evaluate_rows(self.model, self.test.features, self.test.labels)
        return float(loss), float(self._correct.mean()) if len(self._correct) else 0.0

    def accuracy_by_tier(self) -> dict[str, float]:
        """Accuracy of the model last passed to ``__call__`` on each known tier's held-out data."""
        if self.holdout is None or self._correct is None:
            return {}
        return self.holdout.accuracy_by_tier(self._correct)
