"""One training task of a node: train the received model on the node's partition, reply the delta.

The same code runs in the node's warm trainer (``client_app.trainer``, the default) and, with
``warm-trainer=false``, inside Flower's per-message ClientApp process. What must outlive either
process (the device clock's task count, the DP-SGD accountant, the fault cycle) lives in
``context.state``; what is only expensive to rebuild (the partition) comes from a
:data:`PartitionSource`: the trainer keeps it in memory, the per-message process in
``context.state``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, RecordDict

from client_app.node import REAL_DEVICE, NodeProfile
from fedbuff import protocol
from fedbuff.settings import RunSettings

if TYPE_CHECKING:
    from fedbuff.datasets import FederatedData
    from fedbuff.model import ModelSpec

log = logging.getLogger(__name__)

Partition = tuple[np.ndarray, np.ndarray, "ModelSpec"]
PartitionSource = Callable[[Context, RunSettings, NodeProfile], Partition]

PARTITION_KEY = "partition"
ROWS_KEY = "partition-rows"
STATE_CACHE_BYTES = 16 * 2**20  # larger partitions are cached as row indices (see local_partition)
DATA_SHAPE_KEY = "data-shape"
CLOCK_KEY = "device-clock"
DP_SGD_STATE = "dp-sgd-accountant"


def local_partition(context: Context, settings: RunSettings, node: NodeProfile) -> Partition:
    """This node's training data and the model it needs, cached in ``context.state`` across
    the run's messages (the per-message path: each message is a fresh process).

    A small partition is kept whole in ``context.state`` (later messages skip loading and
    partitioning). A large one only as row indices, and later messages reload the dataset
    file: Flower sends ``context.state`` back and forth with every message, and a 63 MB
    Fashion-MNIST partition made that push fail ("ClientApp stopped responding").
    """
    from fedbuff import run_data
    from fedbuff.model import ModelSpec

    shape = context.state.config_records.get(DATA_SHAPE_KEY)
    if shape is not None:
        # cast: the record is this function's own, written below with int sizes
        spec = ModelSpec(cast(int, shape["num-features"]), cast(int, shape["num-classes"]), bool(shape["recurrent"]))
        cached = context.state.array_records.get(PARTITION_KEY)
        if cached is not None:
            features, labels = cached.to_numpy_ndarrays()
            return features, labels, spec
        rows = context.state.array_records[ROWS_KEY].to_numpy_ndarrays()[0]
        train = run_data.load(settings).train
        return train.features[rows], train.labels[rows], spec
    data = run_data.load(settings)
    rows = run_data.client_rows(settings, data, node.partition_id, node.num_partitions)
    features, labels = data.train.features[rows], data.train.labels[rows]
    spec = ModelSpec.of(data)
    if features.nbytes + labels.nbytes <= STATE_CACHE_BYTES:
        context.state[PARTITION_KEY] = ArrayRecord([features, labels])
    else:
        context.state[ROWS_KEY] = ArrayRecord([rows])
    context.state[DATA_SHAPE_KEY] = ConfigRecord(
        {"num-features": spec.num_features, "num-classes": spec.num_classes, "recurrent": spec.recurrent}
    )
    return features, labels, spec


class MemoryPartition:
    """The partition held in this process's memory: loaded by the first task, then reused
    (the warm trainer's source; ``context.state`` stays small)."""

    def __init__(self) -> None:
        self._partition: Partition | None = None

    def __call__(self, context: Context, settings: RunSettings, node: NodeProfile) -> Partition:
        if self._partition is None:
            from fedbuff import run_data
            from fedbuff.model import ModelSpec

            data = run_data.load(settings)
            rows = run_data.client_rows(settings, data, node.partition_id, node.num_partitions)
            self._partition = data.train.features[rows], data.train.labels[rows], ModelSpec.of(data)
        return self._partition


class SharedPartitions:
    """Every partition of one run's data, split once and held in this process's memory: the
    source for Flower's simulation engine, whose worker processes each train many virtual
    nodes (1,000 nodes would otherwise load and split the dataset 1,000 times)."""

    def __init__(self) -> None:
        self._key: tuple[RunSettings, int] | None = None
        self._split: tuple[FederatedData, list[np.ndarray]] | None = None

    def __call__(self, context: Context, settings: RunSettings, node: NodeProfile) -> Partition:
        from fedbuff import run_data
        from fedbuff.model import ModelSpec

        key = (settings, node.num_partitions)  # a run's settings decide its data and split
        if self._split is None or self._key != key:
            data = run_data.load(settings)
            self._key, self._split = key, (data, run_data.all_client_rows(settings, data, node.num_partitions))
        data, rows = self._split
        part = rows[node.partition_id]
        return data.train.features[part], data.train.labels[part], ModelSpec.of(data)


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


def train_task(content: RecordDict, context: Context, partitions: PartitionSource = local_partition) -> RecordDict:
    """Local SGD from the dispatched model; the reply's content, ``delta = dispatched - trained``.

    With ``reply="weights"`` in the message config (Flower's FedAvg baseline) the trained
    weights themselves are sent.
    """
    started = time.monotonic()
    from fedbuff.model import build_model, get_weights, pick_device, set_weights
    from fedbuff.model import train as train_model

    settings = RunSettings.from_run_config(context.run_config)
    node = NodeProfile.from_node_config(context.node_config)
    features, labels, spec = partitions(context, settings, node)

    dispatched = content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    config: Mapping[str, ConfigRecordValues] = content.config_records.get(protocol.CONFIG, {})
    version = protocol.task_version(config)
    reply_weights = protocol.wants_weights(config)
    settings = _planned(settings, protocol.task_local_steps(config), len(labels))
    model = build_model(settings.hidden_units, settings.seed, spec)
    set_weights(model, dispatched)
    device = pick_device()
    train_started = time.monotonic()
    privacy_metrics: dict[str, float] = {}
    if settings.dp_sgd:
        loss, batches, privacy_metrics = _train_dp_sgd(model, features, labels, settings, context, device)
    else:
        loss, batches = train_model(
            model,
            features,
            labels,
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
        protocol.NUM_EXAMPLES: len(labels),
        protocol.TRAIN_LOSS: loss,
        protocol.TRAIN_SECONDS: train_seconds,
        protocol.TASK_SECONDS: time.monotonic() - started,
        **privacy_metrics,
    }
    return protocol.reply_content(update, metrics, device_record, envelope)


def _planned(settings: RunSettings, steps: int | None, examples: int) -> RunSettings:
    """The settings this task trains with: the server's planned ``local-steps``, run across as
    many epochs as they take (a step is a batch), or the run config's when none was planned."""
    if steps is None:
        return settings
    batches = max(math.ceil(examples / settings.batch_size), 1)
    return dataclasses.replace(settings, local_steps=steps, local_epochs=math.ceil(steps / batches))


def _train_dp_sgd(
    model, features: np.ndarray, labels: np.ndarray, settings: RunSettings, context: Context, device
) -> tuple[float, int, dict[str, float]]:
    """Opacus DP-SGD; this node's accountant history lives in ``context.state`` across messages."""
    from client_app.dp_sgd import train_dp_sgd

    history = context.state.config_records.get(DP_SGD_STATE)
    result = train_dp_sgd(
        model,
        features,
        labels,
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
