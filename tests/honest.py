"""Honest clients in process: real local training on real partitions, answering a FakeGrid.

They train the way the project's ClientApp does (``fedbuff.model.train`` on the node's
``fedbuff.run_data`` partition, seeded per version and partition, reply ``dispatched -
trained``), without Flower's transport, so a loop test can measure what an honest run of the
default task really does (step norms, accuracy) in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedbuff import run_data
from fedbuff.datasets import FederatedData
from fedbuff.model import ModelSpec, build_model, evaluate, get_weights, set_weights, train
from fedbuff.settings import RunSettings


@dataclass
class HonestClients:
    """Node ``i + 1`` holds partition ``i`` of ``num_nodes``; call the object as a FakeGrid responder."""

    settings: RunSettings
    num_nodes: int
    data: FederatedData = field(init=False)
    spec: ModelSpec = field(init=False)

    def __post_init__(self) -> None:
        self.data = run_data.load(self.settings)
        self.spec = ModelSpec.of(self.data)
        self.rows = {
            i + 1: run_data.client_rows(self.settings, self.data, i, self.num_nodes) for i in range(self.num_nodes)
        }

    @property
    def node_ids(self) -> list[int]:
        return list(self.rows)

    def initial(self) -> list[np.ndarray]:
        """The initial model the ServerApp would start from."""
        return get_weights(build_model(self.settings.hidden_units, self.settings.seed, self.spec))

    def __call__(self, msg: Message) -> Message:
        import torch

        settings, node = self.settings, msg.metadata.dst_node_id
        dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
        version = int(msg.content.config_records["config"]["server-version"])
        model = build_model(settings.hidden_units, settings.seed, self.spec)
        set_weights(model, dispatched)
        rows = self.rows[node]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny batches: threads only contend with the other test worker
        try:
            loss, _ = train(
                model,
                self.data.train.features[rows],
                self.data.train.labels[rows],
                epochs=settings.local_epochs,
                steps=settings.local_steps,
                batch_size=settings.batch_size,
                lr=settings.client_lr,
                seed=settings.seed + 7919 * version + node - 1,
                device=torch.device("cpu"),
            )
        finally:
            torch.set_num_threads(threads)
        delta = [d - t for d, t in zip(dispatched, get_weights(model), strict=True)]
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(delta),
                    "metrics": MetricRecord({"num-examples": len(rows), "train-loss": loss, "train-seconds": 0.01}),
                    "device": ConfigRecord(
                        {
                            "device-tier": "high",
                            "device-kind": "cpu",
                            "partition-id": node - 1,
                            "num-partitions": self.num_nodes,
                        }
                    ),
                }
            ),
            reply_to=msg,
        )

    def evaluator(self):
        """Central evaluation on the server's held-out split, as the ServerApp does it."""
        model = build_model(self.settings.hidden_units, self.settings.seed, self.spec)

        def evaluate_arrays(arrays: list[np.ndarray]) -> tuple[float, float]:
            set_weights(model, arrays)
            return evaluate(model, self.data.test.features, self.data.test.labels)

        return evaluate_arrays
