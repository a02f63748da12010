"""The task of this Flower app: the model, and where each node's data come from.

fedbuff-deploy (the engine, installed beside Flower) does everything else: the asynchronous
server loop, the optimizer and the batches, device tiers, DP-SGD, secure aggregation,
validation of replies, metrics and checkpoints. docs/tasks.md of fedbuff-deploy explains every
method; the places to edit are marked EDIT.

Each node reads its own file, named by its node config: start a SuperNode with
``--node-config 'partition-id=0 num-partitions=3 data-path="/data/mine.npz"'`` (``fedbuff local``
does that for you with ``--node-config 'data-path="data/node-{partition-id}.npz"'``). The server
holds no data unless ``server-test-path`` names a file it may evaluate on (a research run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from fedbuff.task import CentralData, Examples, Node, NodeData, TaskError
from fedbuff.task import Task as FedbuffTask

# EDIT: the shape of one example and the number of classes.
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def read_examples(path: Path) -> Examples:
    """Images and labels from one file: a .npz with arrays ``x`` (N×28×28 or N×784, pixels in
    [0, 1] or [0, 255]) and ``y`` (N integer labels), or a .csv with a header row, the label in
    the first column and the pixels after it. EDIT this to read your own format."""
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    elif path.suffix == ".csv":
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        x, y = table[:, 1:], table[:, 0]
    else:
        raise TaskError(f"{path}: expected a .npz or .csv file")
    x = np.asarray(x, dtype=np.float32)
    if x.size != len(x) * int(np.prod(IMAGE_SHAPE)):
        raise TaskError(f"{path}: each example must have {int(np.prod(IMAGE_SHAPE))} values, got shape {x.shape}")
    if x.max(initial=0.0) > 1.0:
        x = x / 255.0
    return Examples(x.reshape(len(x), *IMAGE_SHAPE), np.asarray(y, dtype=np.int64))


class Task(FedbuffTask):
    """A small CNN on 28×28 grey images, trained on each node's own file.

    ``self.config`` is the run config ([tool.flwr.app.config] in pyproject.toml, with ``-c``
    overrides): the engine's knobs and this task's own (``holdout-fraction``,
    ``server-test-path``).
    """

    def model(self) -> nn.Module:
        """A fresh model (the engine seeds torch around this call). EDIT: your network. Keep
        BatchNorm out if you train with dp-sgd=true (use nn.GroupNorm)."""
        return nn.Sequential(
            nn.Conv2d(IMAGE_SHAPE[0], 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16×14×14
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32×7×7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, NUM_CLASSES),
        )

    def load_data(self, node: Node) -> NodeData:
        """This node's examples: its own file (``data-path`` in its node config), with a held-out
        share (``holdout-fraction``) kept apart as its test split."""
        examples = read_examples(node.path("data-path"))
        order = np.random.default_rng(int(self.config.get("seed", 0))).permutation(len(examples))
        held_out = int(len(examples) * float(self.config.get("holdout-fraction", 0.2)))
        return NodeData(train=examples.select(order[held_out:]), test=examples.select(order[:held_out]))

    def central_data(self) -> CentralData | None:
        """What the server may evaluate every model version on: nothing (a deployment: the data
        stay on the nodes), unless ``server-test-path`` names a file the server can read."""
        path = str(self.config.get("server-test-path", ""))
        if not path:
            return None
        if not Path(path).is_file():
            raise TaskError(f"server-test-path {path} is not a file the server can read")
        return CentralData(test=read_examples(Path(path)))

    # The defaults fit classification (cross-entropy; metrics accuracy and loss). EDIT to
    # change them: loss(outputs, targets) for training, example_metrics(outputs, targets)
    # with the metrics it declares, train_step(model, inputs, targets, optimizer) for one step.
