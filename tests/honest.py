"""Honest clients in process: real local training on real partitions, answering a FakeGrid.

They train the way the project's ClientApp does (the run's task, ``fedbuff.training.train`` on
the node's data, seeded per version and partition, reply ``dispatched - trained``), without
Flower's transport, so a loop test can measure what an honest run of the default task really
does (step norms, accuracy) in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedbuff.model import get_weights, set_weights
from fedbuff.settings import RunSettings
from fedbuff.task import Examples, Node, Task, load_task
from fedbuff.training import build_model, evaluate, train


@dataclass
class HonestClients:
    """Node ``i + 1`` holds partition ``i`` of ``num_nodes``; call the object as a FakeGrid responder.

    ``task_config`` holds the task's own knobs (e.g. ``hidden-units``)."""

    settings: RunSettings
    num_nodes: int
    task_config: dict[str, object] = field(default_factory=dict)
    task: Task = field(init=False)

    def __post_init__(self) -> None:
        self.task = load_task(self.settings.task, {**self.settings.as_dict(), **self.task_config})  # type: ignore[arg-type]
        self.examples: dict[int, Examples] = {
            i + 1: self.task.load_data(Node({}, i, self.num_nodes)).train for i in range(self.num_nodes)
        }

    @property
    def node_ids(self) -> list[int]:
        return list(self.examples)

    def initial(self) -> list[np.ndarray]:
        """The initial model the ServerApp would start from."""
        return get_weights(build_model(self.task, self.settings.seed))

    def __call__(self, msg: Message) -> Message:
        import torch

        settings, node = self.settings, msg.metadata.dst_node_id
        dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
        version = int(msg.content.config_records["config"]["server-version"])
        model = build_model(self.task, settings.seed)
        set_weights(model, dispatched)
        examples = self.examples[node]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny batches: threads only contend with the other test worker
        try:
            loss, _ = train(
                self.task,
                model,
                examples,
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
                    "metrics": MetricRecord({"num-examples": len(examples), "train-loss": loss, "train-seconds": 0.01}),
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
        model = build_model(self.task, self.settings.seed)
        central = self.task.central_data()
        assert central is not None

        def evaluate_arrays(arrays: list[np.ndarray]) -> dict[str, float]:
            set_weights(model, arrays)
            return evaluate(self.task, model, central.test)

        return evaluate_arrays
