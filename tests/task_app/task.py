"""A task of the tests' own, outside the engine's packages: a tiny MLP on synthetic clusters,
its own metrics (``hit-rate``, ``miss-loss``), its own training step (the hook: clipped
gradients) and central data. tests/test_e2e_tasks.py trains it on real SuperNodes.

``nan-partition`` (this task's knob) gives that node NaN features, as a broken sensor would:
its training yields NaN weights, which the server must refuse and count. Two more tasks for
the refusals before start: :class:`BatchNormTask` (a model Opacus cannot train) and the module
``broken`` (an import that fails).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from fedbuff.task import CentralData, Examples, Metric, Node, NodeData
from fedbuff.task import Task as FedbuffTask

FEATURES, CLASSES = 6, 3


def clusters(seed: int, rows: int) -> Examples:
    """Rows around three fixed centres (the same for every node and the server)."""
    centres = np.random.default_rng(0).normal(0.0, 2.0, size=(CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=rows)
    features = centres[labels] + rng.normal(0.0, 1.0, size=(rows, FEATURES))
    return Examples(features.astype(np.float32), labels.astype(np.int64))


class Task(FedbuffTask):
    metrics = (Metric("hit-rate", higher_is_better=True), Metric("miss-loss", higher_is_better=False))

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))

    def load_data(self, node: Node) -> NodeData:
        train = clusters(100 + node.partition_id, 200)
        if node.partition_id == int(self.config.get("nan-partition", -1)):
            train = Examples(np.full_like(train.inputs, np.nan), train.targets)
        return NodeData(train=train, test=clusters(200 + node.partition_id, 50))

    def central_data(self) -> CentralData:
        return CentralData(test=clusters(999, 300))

    def example_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "hit-rate": (outputs.argmax(dim=1) == targets).float(),
            "miss-loss": functional.cross_entropy(outputs, targets, reduction="none"),
        }

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, optimizer) -> torch.Tensor:
        optimizer.zero_grad()
        loss = self.loss(model(inputs), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return loss


class BatchNormTask(Task):
    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))
