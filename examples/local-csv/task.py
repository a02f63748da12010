"""Each node's own CSV file, and a server that holds no data: a deployment (docs/tasks.md).

A node is started with the path of its file in its node config::

    flower-supernode ... --node-config 'partition-id=0 num-partitions=2 data-path="/data/clinic-a.csv"'

(``fedbuff local --node-config 'data-path="data/node-{partition-id}.csv"'`` does that for a
local federation). The file has a header row, ``num-features`` numeric feature columns and a
``label`` column (integers 0 … ``num-classes`` - 1); make_csv.py writes synthetic ones. The
model is a small MLP whose input and output sizes are run-config knobs: the server builds the
model without seeing any data. Nothing is evaluated on the server (``central_data`` is None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from fedbuff.task import Examples, Node, NodeData, TaskError
from fedbuff.task import Task as FedbuffTask

LABEL = "label"


class Task(FedbuffTask):
    """An MLP on the feature columns; each node holds out ``holdout-fraction`` of its rows."""

    def model(self) -> nn.Module:
        features, classes = int(self.config.get("num-features", 8)), int(self.config.get("num-classes", 3))
        return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def load_data(self, node: Node) -> NodeData:
        examples = self.read_csv(node.path("data-path"))
        order = np.random.default_rng(int(self.config.get("seed", 42)) + node.partition_id).permutation(len(examples))
        held_out = int(len(examples) * float(self.config.get("holdout-fraction", 0.2)))
        return NodeData(train=examples.select(order[held_out:]), test=examples.select(order[:held_out]))

    def read_csv(self, path: Path) -> Examples:
        """Features and labels of one file, checked against the model's sizes."""
        with open(path, encoding="utf-8") as source:
            header = source.readline().strip().split(",")
        if LABEL not in header:
            raise TaskError(f"{path}: no {LABEL!r} column in its header {header}")
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
        label = header.index(LABEL)
        features = np.delete(table, label, axis=1).astype(np.float32)
        labels = table[:, label].astype(np.int64)
        expected, classes = int(self.config.get("num-features", 8)), int(self.config.get("num-classes", 3))
        if features.shape[1] != expected:
            raise TaskError(f"{path}: {features.shape[1]} feature columns, but num-features is {expected}")
        if len(labels) and not (labels.min() >= 0 and labels.max() < classes):
            raise TaskError(f"{path}: labels must be 0 … {classes - 1} (num-classes {classes})")
        return Examples(features, labels)
