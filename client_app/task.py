"""One training task of a node: train the received model on the node's data with the run's
task (``fedbuff.task``), reply the delta.

The same code runs in the node's warm trainer (``client_app.trainer``, the default) and, with
``warm-trainer=false``, inside Flower's per-message ClientApp process. What must outlive either
process (the device clock's task count, the DP-SGD accountant, the fault cycle) lives in
``context.state``; what is only expensive to rebuild (the task and the node's data) comes from a
:data:`DataSource`: the trainer keeps it in memory, the per-message process in ``context.state``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, RecordDict

from client_app.node import REAL_DEVICE, NodeProfile
from fedbuff import protocol
from fedbuff.settings import RunSettings
from fedbuff.task import Examples, Node, NodeData, Task, TaskError, load_task

log = logging.getLogger(__name__)

NodeTask = tuple[Task, NodeData]
DataSource = Callable[[Context, RunSettings, NodeProfile], NodeTask]

TRAIN_KEY = "node-train-data"
TEST_KEY = "node-test-data"
STATE_CACHE_BYTES = 16 * 2**20  # larger data are loaded again by each message (see local_data)
CLOCK_KEY = "device-clock"
DP_SGD_STATE = "dp-sgd-accountant"


def node_of(context: Context, profile: NodeProfile) -> Node:
    """The node as a task sees it: its whole node config, its partition and its tier."""
    return Node(dict(context.node_config), profile.partition_id, profile.num_partitions, profile.device_tier)


def load_node_data(task: Task, node: Node) -> NodeData:
    """``task.load_data(node)``, checked; every failure is a :class:`TaskError` naming task and node."""
    where = f"{task.name} on the node of partition {node.partition_id}"
    try:
        data = task.load_data(node)
    except TaskError as err:
        raise TaskError(f"{where}: {err}") from err
    except Exception as err:  # the user's loader: its error, in one line
        raise TaskError(f"{where}: load_data failed: {type(err).__name__}: {err}") from err
    if not isinstance(data, NodeData):
        raise TaskError(f"{where}: load_data returned {type(data).__name__}, not a NodeData")
    if len(data.train) == 0:
        raise TaskError(f"{where}: the node has no training examples")
    return data


def local_data(context: Context, settings: RunSettings, profile: NodeProfile) -> NodeTask:
    """The task and this node's training data, cached in ``context.state`` across the run's
    messages (the per-message path: each message is a fresh process).

    Training data of numpy arrays up to :data:`STATE_CACHE_BYTES` are kept in ``context.state``
    (later messages skip loading them); larger data are loaded again by every message: Flower
    sends ``context.state`` back and forth with every message, and a 63 MB Fashion-MNIST
    partition made that push fail ("ClientApp stopped responding").
    """
    task = load_task(settings.task, context.run_config)
    cached = context.state.array_records.get(TRAIN_KEY)
    if cached is not None:
        held_out = context.state.array_records.get(TEST_KEY)
        test = Examples(*held_out.to_numpy_ndarrays()) if held_out is not None else None
        return task, NodeData(Examples(*cached.to_numpy_ndarrays()), test)
    data = load_node_data(task, node_of(context, profile))
    splits = [(TRAIN_KEY, data.train), *([(TEST_KEY, data.test)] if data.test is not None else [])]
    arrays = all(isinstance(part, np.ndarray) for _, split in splits for part in (split.inputs, split.targets))
    if arrays and sum(split.inputs.nbytes + split.targets.nbytes for _, split in splits) <= STATE_CACHE_BYTES:
        for key, split in splits:
            context.state[key] = ArrayRecord([split.inputs, split.targets])
    return task, data


class MemoryData:
    """The task and the node's data held in this process's memory: loaded by the first task,
    then reused (the warm trainer's source; ``context.state`` stays small)."""

    def __init__(self) -> None:
        self._loaded: NodeTask | None = None

    def __call__(self, context: Context, settings: RunSettings, profile: NodeProfile) -> NodeTask:
        if self._loaded is None:
            task = load_task(settings.task, context.run_config)
            self._loaded = task, load_node_data(task, node_of(context, profile))
        return self._loaded


class SharedData:
    """One task per run and every node's data it loaded, held in this process's memory: the
    source for Flower's simulation engine, whose worker processes each train many virtual
    nodes (a built-in task then splits its data set once, not once per node)."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._task: Task | None = None
        self._data: dict[tuple[int, int], NodeData] = {}

    def __call__(self, context: Context, settings: RunSettings, profile: NodeProfile) -> NodeTask:
        key = (context.run_id, settings)  # a run's settings decide its task and data
        if self._task is None or self._key != key:
            self._key, self._task, self._data = key, load_task(settings.task, context.run_config), {}
        node = (profile.partition_id, profile.num_partitions)
        if node not in self._data:
            self._data[node] = load_node_data(self._task, node_of(context, profile))
        return self._task, self._data[node]


def emulated_seconds(
    context: Context, settings: RunSettings, node: NodeProfile, measured: float, batches: int, payload_bytes: int
) -> float:
    """Wall time this task takes on the emulated device (``fedbuff.device_model``): tier
    ratio × jitter, plus the link, paused while the node is offline. A ``real`` node: as measured.

    The task number and the node's first-task time live in ``context.state``, so the draws
    are the same on a rerun and the availability schedule runs from the node's start.
    """
    clock_state = context.state.config_records.get(CLOCK_KEY)
    now = time.time()
    # cast: the record is this function's own, written below with an int and a float
    task, started = (cast(int, clock_state["tasks"]), cast(float, clock_state["started"])) if clock_state else (0, now)
    context.state[CLOCK_KEY] = ConfigRecord({"tasks": task + 1, "started": started})
    clock = settings.device_model().for_node(node.partition_id, node.device_tier)
    busy = clock.task_seconds(task, measured, batches, payload_bytes)
    if node.device_tier == REAL_DEVICE:
        return busy
    elapsed = now - started
    return clock.availability.finish_time(elapsed, busy) - elapsed


def train_task(content: RecordDict, context: Context, source: DataSource = local_data) -> RecordDict:
    """Local training from the dispatched model; the reply's content, ``delta = dispatched - trained``.

    With ``reply="weights"`` in the message config (Flower's FedAvg baseline) the trained
    weights themselves are sent.
    """
    started = time.monotonic()
    from fedbuff.model import get_weights, pick_device, set_weights
    from fedbuff.training import build_model
    from fedbuff.training import train as train_model

    settings = RunSettings.from_run_config(context.run_config)
    node = NodeProfile.from_node_config(context.node_config)
    task, data = source(context, settings, node)
    examples = data.train

    dispatched = content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    config: Mapping[str, ConfigRecordValues] = content.config_records.get(protocol.CONFIG, {})
    version = protocol.task_version(config)
    reply_weights = protocol.wants_weights(config)
    settings = _planned(settings, protocol.task_local_steps(config), len(examples))
    model = build_model(task, settings.seed)
    try:
        set_weights(model, dispatched)
    except (ValueError, RuntimeError) as err:
        raise TaskError(f"{task.name}: the dispatched model does not fit this node's model: {err}") from err
    device = pick_device()
    train_started = time.monotonic()
    privacy_metrics: dict[str, float] = {}
    if settings.dp_sgd:
        loss, batches, privacy_metrics = _train_dp_sgd(task, model, examples, settings, context, device)
    else:
        loss, batches = train_model(
            task,
            model,
            examples,
            epochs=settings.local_epochs,
            steps=settings.local_steps,
            batch_size=settings.batch_size,
            lr=settings.client_lr,
            seed=settings.seed + 7919 * version + node.partition_id,
            device=device,
        )
    train_seconds = time.monotonic() - train_started
    trained = get_weights(model)
    # Flower's FedAvg averages whole models; the async strategies add deltas.
    update = trained if reply_weights else [b - a for b, a in zip(dispatched, trained)]
    if settings.user_dp and not reply_weights:
        update = _privatize(update, settings)

    if not settings.virtual_clock:  # on the virtual clock the server gives the task its duration
        target = emulated_seconds(context, settings, node, train_seconds, batches, sum(a.nbytes for a in dispatched))
        if target > train_seconds:
            time.sleep(target - train_seconds)

    if node.test_fault:
        from client_app.faults import inject

        update = inject(node.test_fault, update, context)
    envelope = None
    if settings.secagg and not reply_weights:
        update, envelope = _mask(update, settings, context, config)
    device_record: dict[str, int | str] = {
        protocol.DEVICE_TIER: node.device_tier,
        protocol.DEVICE_KIND: str(device.type),
        protocol.PARTITION_ID: node.partition_id,
        protocol.NUM_PARTITIONS: node.num_partitions,
    }
    metrics = {
        protocol.NUM_EXAMPLES: len(examples),
        protocol.TRAIN_LOSS: loss,
        protocol.TRAIN_SECONDS: train_seconds,
        protocol.TASK_SECONDS: time.monotonic() - started,
        **privacy_metrics,
    }
    return protocol.reply_content(update, metrics, device_record, envelope)


def evaluate_task(content: RecordDict, context: Context, source: DataSource = local_data) -> RecordDict:
    """Federated evaluation: the dispatched model's metrics on this node's held-out split (the
    task's ``example_metrics``, averaged); the reply carries metrics and the node's tier only."""
    from fedbuff.model import set_weights
    from fedbuff.training import build_model, evaluate_rows, mean_metrics

    settings = RunSettings.from_run_config(context.run_config)
    node = NodeProfile.from_node_config(context.node_config)
    task, data = source(context, settings, node)
    if data.test is None or len(data.test) == 0:
        raise TaskError(
            f"{task.name} on the node of partition {node.partition_id}: no held-out split to evaluate "
            "(load_data returned NodeData without test examples)"
        )
    model = build_model(task, settings.seed)
    try:
        set_weights(model, content.array_records[protocol.ARRAYS].to_numpy_ndarrays())
    except (ValueError, RuntimeError) as err:
        raise TaskError(f"{task.name}: the dispatched model does not fit this node's model: {err}") from err
    metrics = mean_metrics(evaluate_rows(task, model, data.test))
    return protocol.evaluation_content(len(data.test), metrics, node.device_tier)


def _planned(settings: RunSettings, steps: int | None, examples: int) -> RunSettings:
    """The settings this task trains with: the server's planned ``local-steps``, run across as
    many epochs as they take (a step is a batch), or the run config's when none was planned."""
    if steps is None:
        return settings
    batches = max(math.ceil(examples / settings.batch_size), 1)
    return dataclasses.replace(settings, local_steps=steps, local_epochs=math.ceil(steps / batches))


def _train_dp_sgd(
    task: Task, model, examples: Examples, settings: RunSettings, context: Context, device
) -> tuple[float, int, dict[str, float]]:
    """Opacus DP-SGD; this node's accountant history lives in ``context.state`` across messages."""
    from client_app.dp_sgd import train_dp_sgd

    history = context.state.config_records.get(DP_SGD_STATE)
    result = train_dp_sgd(
        model,
        examples,
        task=task,
        options=settings,
        epochs=settings.local_epochs,
        steps=settings.local_steps,
        batch_size=settings.batch_size,
        lr=settings.client_lr,
        device=device,
        history=dict(history) if history else None,
    )
    context.state[DP_SGD_STATE] = ConfigRecord(result.history)
    loss = result.loss if np.isfinite(result.loss) else 0.0  # every Poisson batch was empty
    privacy = {protocol.DP_EPSILON: result.epsilon, protocol.DP_NOISE_MULTIPLIER: result.noise_multiplier}
    return loss, result.steps, privacy


def _privatize(delta: list[np.ndarray], settings: RunSettings) -> list[np.ndarray]:
    """User-level DP on the client: clip to the L2 bound, then (distributed mode) add a noise share.

    Both happen before masking, so they work with secure aggregation. The noise generator
    is seeded by the OS: a server that knows the seed could remove the noise.
    """
    from strategies.dp import add_noise_share, clip_by_l2

    clipped, _ = clip_by_l2(delta, settings.user_dp_clip)
    std = settings.share_std()
    return add_noise_share(clipped, std, np.random.default_rng()) if std > 0 else clipped


def _mask(
    delta: list[np.ndarray], settings: RunSettings, context: Context, config: Mapping[str, ConfigRecordValues]
) -> tuple[list[np.ndarray], ConfigRecord]:
    """Replace the delta by its masked ring vector; only the envelope travels beside it."""
    from mask_service.masking import NodeSecAggConfig, mask_update, secagg_context

    node = NodeSecAggConfig.from_node_config(context.node_config)
    relayed = config[protocol.SECAGG_SERVICE_KEY]
    # checked against the pin; any other value fails the key check as its text, as it always did
    service_key = node.service_key(relayed if isinstance(relayed, (bytes, str)) else str(relayed))
    length = sum(int(d.size) for d in delta)
    signing_key, key_fingerprint = node.signing_identity()
    masked = mask_update(
        delta,
        settings.ring_codec(),
        service_key,
        signing_key,
        secagg_context(context.run_id, length),
        key_fingerprint=key_fingerprint,
    )
    envelope = ConfigRecord(
        {
            protocol.EPHEMERAL_PUBLIC: masked.ephemeral_public,
            protocol.SIGNATURE: masked.signature,
            protocol.NODE_KEY_FINGERPRINT: masked.node_key_fingerprint,
            protocol.CLIPPED_COORDINATES: masked.clipped,
        }
    )
    return [masked.masked], envelope
