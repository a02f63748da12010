"""ClientApp: what Flower loads for every message. It only forwards the task.

Flower 1.41 starts a fresh ``flwr-clientapp`` process per message. With ``warm-trainer=true``
(the default) the task goes to the node's long-lived trainer (``client_app.warm``), which
imported torch and loaded the partition once; this module imports Flower, numpy and the
project's settings and protocol code only, so the per-message process stays small.
With ``warm-trainer=false``, and wherever Flower itself keeps ClientApps alive (the simulation
engine), the task is trained here, in this process (``client_app.task``).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client_app import warm
from fedbuff import protocol
from fedbuff.settings import RunSettings

if TYPE_CHECKING:
    from client_app.task import DataSource

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the dispatched model on this node's partition; reply the delta (or the weights)."""
    return Message(_run(msg, context, "train"), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's held-out split; reply its metrics only."""
    return Message(_run(msg, context, "evaluate"), reply_to=msg)


def _run(msg: Message, context: Context, kind: str) -> RecordDict:
    """The task's reply content: from the node's warm trainer, or trained (evaluated) here."""
    settings = RunSettings.from_run_config(context.run_config)
    if settings.warm_trainer and warm.in_flower_clientapp_process():
        deadline = msg.metadata.created_at + msg.metadata.ttl
        return warm.train(
            msg.content,
            context,
            settings.warm_trainer_idle_seconds,
            deadline=min(deadline, time.time() + settings.task_ttl_seconds),
            kind=kind,
        )
    if kind == "evaluate":
        from client_app.task import evaluate_task

        return evaluate_task(msg.content, context, _source())
    return train_here(msg.content, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which partition this node holds and how many training examples (the virtual clock
    asks each simulated node once)."""
    from client_app.node import NodeProfile

    settings = RunSettings.from_run_config(context.run_config)
    _task, data = _source()(context, settings, NodeProfile.from_node_config(context.node_config))
    return Message(protocol.identity_content(context.node_config, len(data.train)), reply_to=msg)


def train_here(content: RecordDict, context: Context) -> RecordDict:
    """The task trained in this process: torch and the partition are loaded for it (in the
    simulation engine, from the data its process has split already)."""
    from client_app.task import train_task

    return train_task(content, context, _source())


def _source() -> DataSource:
    """Where this process gets the task and the node's data: kept in ``context.state`` in
    Flower's per-message process, shared by the virtual nodes of a simulation worker."""
    from client_app.task import local_data

    return local_data if warm.in_flower_clientapp_process() else _simulated_data()


@functools.cache
def _simulated_data() -> DataSource:
    """Flower's simulation engine runs many virtual nodes in each of its worker processes: they
    share one task, which splits a built-in data set once (one per process, hence the cache)."""
    from client_app.task import SharedData

    return SharedData()
