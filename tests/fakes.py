"""An in-process stand-in for Flower's Grid, for testing the loop's decisions quickly.

The real transport is covered by the end-to-end tests; this one lets a test choose each
reply (a good update, a malformed one, or an error code) deterministically.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

Responder = Callable[[Message], Message | None]


class FakeGrid:
    """Answers each pushed message at the next pull with whatever ``respond`` returns."""

    def __init__(self, node_ids: Iterable[int], respond: Responder) -> None:
        self.node_ids = list(node_ids)
        self.respond = respond
        self.pushed: list[Message] = []
        self._pending: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.pushed.append(msg)
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = []
        for message_id in list(message_ids):
            msg = self._pending.pop(message_id, None)
            if msg is None:
                continue
            reply = self.respond(msg)
            if reply is None:  # not answered yet
                self._pending[message_id] = msg
            else:
                replies.append(reply)
        return replies


def train_reply(
    msg: Message, delta_fn: Callable[[list[np.ndarray]], list[np.ndarray]], tier: str = "high", num_examples: int = 10
) -> Message:
    """A ClientApp-shaped reply whose delta is ``delta_fn(dispatched_arrays)``."""
    dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
    content = RecordDict(
        {
            "arrays": ArrayRecord(delta_fn(dispatched)),
            "metrics": MetricRecord({"num-examples": num_examples, "train-seconds": 0.01}),
            "device": ConfigRecord({"device-tier": tier}),
        }
    )
    return Message(content, reply_to=msg)


def error_reply(msg: Message, code: int) -> Message:
    return Message(Error(code=code, reason="injected by test"), reply_to=msg)


def one_node_errs(node_id: int, code: int) -> Responder:
    """Every node answers with :func:`half_step`, except ``node_id``: error ``code`` every time."""

    def respond(msg: Message) -> Message:
        if msg.metadata.dst_node_id == node_id:
            return error_reply(msg, code)
        return train_reply(msg, half_step)

    return respond


def half_step(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """A client delta that always moves the model half-way towards 1.0."""
    return [(a - 1.0) * 0.5 for a in arrays]


def distance_accuracy(arrays: list[np.ndarray]) -> dict[str, float]:
    """An evaluator for the fakes: accuracy 1 - mean distance to the all-ones optimum."""
    return {"loss": 0.0, "accuracy": float(max(0.0, 1.0 - np.abs(arrays[0] - 1.0).mean()))}
