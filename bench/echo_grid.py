"""The server with no transport: the real loop and strategy driven by an in-process Grid.

Every pushed task is answered at the next pull with one canned reply whose arrays stay
serialised (as a pulled reply's are), so the loop still pays deserialisation, validation,
aggregation, server steps and dispatch (model serialisation) — everything the server does
per update except the network. Used by the CPU-time and memory suites.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedbuff import protocol

if TYPE_CHECKING:
    from fedbuff.settings import RunSettings


def model_of(parameters: int) -> list[np.ndarray]:
    """A float32 model of exactly ``parameters`` values: one weight matrix and a bias of 10."""
    return [np.zeros((parameters - 10,), np.float32), np.zeros((10,), np.float32)]


def echo_settings(buffer_size: int, concurrency: int, updates: int) -> RunSettings:
    """FedBuff for an echo-grid run: ``updates`` updates in steps of K = ``buffer_size``, nothing
    evaluated, exported or written (the suites measure aggregation, not outputs)."""
    from fedbuff.settings import RunSettings  # lazy: the memory suite's baseline stays small

    return RunSettings(
        strategy="fedbuff",
        buffer_size=buffer_size,
        concurrency=concurrency,
        max_server_steps=updates // buffer_size,
        eval_every=10**6,
        metrics_enabled=False,
        write_plots=False,
        checkpoint_every=0,
    )


def canned_reply(model: list[np.ndarray], seed: int = 0) -> RecordDict:
    """A valid plaintext train reply (small random delta) for a model shaped like ``model``."""
    rng = np.random.default_rng(seed)
    delta = [rng.normal(0, 1e-3, a.shape).astype(np.float32) for a in model]
    return protocol.reply_content(
        delta, {protocol.NUM_EXAMPLES: 100, protocol.TRAIN_SECONDS: 0.0}, {protocol.DEVICE_TIER: "high"}
    )


class EchoGrid:
    """Answers each pushed task at the next pull with ``reply`` (the same content every time).

    The reply is made at push time and the task dropped, as a real Grid drops a pushed
    message once the SuperLink has it: a task in flight must not keep an old model alive.
    """

    def __init__(self, node_ids: Iterable[int], reply: RecordDict) -> None:
        self.node_ids = list(node_ids)
        self.reply = reply
        self._pending: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink's job
            self._pending[msg.metadata.message_id] = Message(self.reply, reply_to=msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._pending.pop(i) for i in list(message_ids) if i in self._pending]


@contextmanager
def serverapp_identity() -> Iterator[None]:
    """Flower stamps messages with the running task's identity: play a ServerApp meanwhile."""
    names = ("_task_id", "_run_id", "_node_id")
    saved = {name: getattr(TaskIdentity, name, None) for name in names}
    for name, value in zip(names, (1, 1, 0)):
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)
