"""Fashion-MNIST with a CNN: a research task on a bundled data set (docs/tasks.md, "Two data modes").

Every node holds its share of Fashion-MNIST's 60,000 training images, split by its partition id
and count (``data-split``: iid, or dirichlet with ``data-alpha``), and the server may hold the
10,000 test images: it evaluates every model version on them, warms up on the training images
if asked to (``warmup-steps``) and caps a reply's example count at the training set's size.
The data are Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, or
``FEDBUFF_FASHION_MNIST_DIR``), read by fedbuff.datasets.

The CNN has no BatchNorm (GroupNorm normalises each example on its own), so ``dp-sgd=true``
trains it; it has 421,642 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import nn

from fedbuff.datasets import FederatedData, load_fashion_mnist
from fedbuff.partitioners import partition
from fedbuff.task import CentralData, Examples, Node, NodeData, Scalar, TaskError
from fedbuff.task import Task as FedbuffTask

SPLITS = ("iid", "dirichlet")


class Task(FedbuffTask):
    """Two convolution blocks (GroupNorm, ReLU, max-pooling), then two dense layers."""

    def __init__(self, config: Mapping[str, Scalar] | None = None) -> None:
        super().__init__(config)
        self.split = str(self.config.get("data-split", "iid"))
        if self.split not in SPLITS:
            raise TaskError(f"data-split must be one of {SPLITS}, got {self.split!r}")
        self._data: FederatedData | None = None

    @property
    def data(self) -> FederatedData:
        """Fashion-MNIST, read once per process (``train-limit`` / ``test-limit`` > 0 keep the first rows)."""
        if self._data is None:
            self._data = load_fashion_mnist(
                limit_train=int(self.config.get("train-limit", 0)), limit_test=int(self.config.get("test-limit", 0))
            )
        return self._data

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32×14×14
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.GroupNorm(8, 64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 64×7×7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def load_data(self, node: Node) -> NodeData:
        """The node's share of the training images, by its partition id and count."""
        train = self.data.train
        rows = partition(
            self.split,
            train.labels,
            node.num_partitions,
            node.partition_id,
            int(self.config.get("seed", 42)),
            alpha=float(self.config.get("data-alpha", 1.0)),
        )
        return NodeData(train=_images(train.features[rows], train.labels[rows]))

    def central_data(self) -> CentralData:
        """The test images for the server's evaluation; the training images as its warm-up proxy."""
        data = self.data
        return CentralData(
            test=_images(data.test.features, data.test.labels),
            proxy=_images(data.train.features, data.train.labels),
            max_examples=len(data.train),
        )


def _images(features: np.ndarray, labels: np.ndarray) -> Examples:
    """Flat 784-pixel rows as 1×28×28 images."""
    return Examples(features.reshape(len(features), 1, 28, 28), labels)
