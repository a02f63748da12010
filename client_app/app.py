"""ClientApp: train the received model on this node's partition and return the delta.

Each message starts a fresh process in Flower 1.41, so the partition is computed once
per run and kept in ``context.state``; later messages skip loading and partitioning.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.node import REAL_DEVICE, NodeProfile
from fedbuff.settings import RunSettings

if TYPE_CHECKING:
    from fedbuff.model import ModelSpec

log = logging.getLogger(__name__)
app = ClientApp()

PARTITION_KEY = "partition"
ROWS_KEY = "partition-rows"
STATE_CACHE_BYTES = 16 * 2**20  # larger partitions are cached as row indices (see local_partition)
DATA_SHAPE_KEY = "data-shape"
CLOCK_KEY = "device-clock"
DP_SGD_STATE = "dp-sgd-accountant"


def local_partition(context: Context, settings: RunSettings, node: NodeProfile
                    ) -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    """This node's training data and the model it needs, cached across the run's messages.

    A small partition is kept whole in ``context.state`` (later messages skip loading and
    partitioning). A large one only as row indices, and later messages reload the dataset
    file: Flower sends ``context.state`` back and forth with every message, and a 63 MB
    Fashion-MNIST partition made that push fail ("ClientApp stopped responding").
    """
    from fedbuff import run_data
    from fedbuff.model import ModelSpec

    shape = context.state.config_records.get(DATA_SHAPE_KEY)
    if shape is not None:
        spec = ModelSpec(int(shape["num-features"]), int(shape["num-classes"]), bool(shape["recurrent"]))
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
    context.state[DATA_SHAPE_KEY] = ConfigRecord({"num-features": spec.num_features,
                                                  "num-classes": spec.num_classes,
                                                  "recurrent": spec.recurrent})
    return features, labels, spec


def emulated_seconds(context: Context, settings: RunSettings, node: NodeProfile, measured: float,
                     batches: int, payload_bytes: int) -> float:
    """Wall time this task takes on the emulated device (``fedbuff.device_model``): tier
    ratio × jitter, plus the link, paused while the node is offline. A ``real`` node: as measured.

    The task number and the node's first-task time live in ``context.state``, so the draws
    are the same on a rerun and the availability schedule runs from the node's start.
    """
    clock_state = context.state.config_records.get(CLOCK_KEY)
    now = time.time()
    task, started = (int(clock_state["tasks"]), float(clock_state["started"])) if clock_state else (0, now)
    context.state[CLOCK_KEY] = ConfigRecord({"tasks": task + 1, "started": started})
    clock = settings.device_model().for_node(node.partition_id, node.device_tier)
    busy = clock.task_seconds(task, measured, batches, payload_bytes)
    if node.device_tier == REAL_DEVICE:
        return busy
    elapsed = now - started
    return clock.availability.finish_time(elapsed, busy) - elapsed


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local SGD from the dispatched model; reply ``delta = dispatched - trained``.

    With ``reply="weights"`` in the message config (Flower's FedAvg baseline) the trained
    weights themselves are sent.
    """
    started = time.monotonic()
    from fedbuff.model import build_model, get_weights, pick_device, set_weights
    from fedbuff.model import train as train_model

    settings = RunSettings.from_run_config(context.run_config)
    node = NodeProfile.from_node_config(context.node_config)
    features, labels, spec = local_partition(context, settings, node)

    dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
    config = msg.content.config_records.get("config", {})
    # Our loop sends server-version; Flower's own strategies send server-round.
    version = int(config.get("server-version", config.get("server-round", 0)))
    reply_weights = config.get("reply", "delta") == "weights"
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

    target = emulated_seconds(context, settings, node, train_seconds, batches,
                              sum(a.nbytes for a in dispatched))
    if target > train_seconds:
        time.sleep(target - train_seconds)

    if node.test_fault:
        from client_app.faults import inject

        update = inject(node.test_fault, update, context)
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        "device": ConfigRecord({"device-tier": node.device_tier, "device-kind": device.type,
                                "partition-id": node.partition_id,
                                "num-partitions": node.num_partitions}),
    }
    if settings.secagg and not reply_weights:
        update, records["secagg"] = _mask(update, settings, context, config)
    records["arrays"] = ArrayRecord(update)
    records["metrics"] = MetricRecord(
        {
            "num-examples": len(labels),
            "train-loss": loss,
            "train-seconds": train_seconds,
            "task-seconds": time.monotonic() - started,
            **privacy_metrics,
        }
    )
    return Message(RecordDict(records), reply_to=msg)


def _train_dp_sgd(model, features: np.ndarray, labels: np.ndarray, settings: RunSettings,
                  context: Context, device) -> tuple[float, int, dict[str, float]]:
    """Opacus DP-SGD; this node's accountant history lives in ``context.state`` across messages."""
    from client_app.dp_sgd import train_dp_sgd

    history = context.state.config_records.get(DP_SGD_STATE)
    result = train_dp_sgd(
        model, features, labels, options=settings, epochs=settings.local_epochs,
        steps=settings.local_steps, batch_size=settings.batch_size, lr=settings.client_lr,
        device=device, history=dict(history) if history else None,
    )
    context.state[DP_SGD_STATE] = ConfigRecord(result.history)
    loss = result.loss if np.isfinite(result.loss) else 0.0  # every Poisson batch was empty
    return loss, result.steps, {"dp-epsilon": result.epsilon, "dp-noise-multiplier": result.noise_multiplier}


def _privatize(delta: list[np.ndarray], settings: RunSettings) -> list[np.ndarray]:
    """User-level DP on the client: clip to the L2 bound, then (distributed mode) add a noise share.

    Both happen before masking, so they work with secure aggregation. The noise generator
    is seeded by the OS: a server that knows the seed could remove the noise.
    """
    from strategies.dp import add_noise_share, clip_by_l2

    clipped, _ = clip_by_l2(delta, settings.user_dp_clip)
    std = settings.share_std(settings.buffer_size)
    return add_noise_share(clipped, std, np.random.default_rng()) if std > 0 else clipped


def _mask(delta: list[np.ndarray], settings: RunSettings, context: Context,
          config: ConfigRecord) -> tuple[list[np.ndarray], ConfigRecord]:
    """Replace the delta by its masked ring vector; only the envelope travels beside it."""
    from client_app.masking import NodeSecAggConfig, mask_update, secagg_context

    node = NodeSecAggConfig.from_node_config(context.node_config)
    service_key = node.service_key(config["secagg-service-key"])  # checked against the pin
    length = sum(int(d.size) for d in delta)
    masked = mask_update(delta, settings.ring_codec(), service_key, node.signing_key(),
                         secagg_context(context.run_id, length))
    envelope = ConfigRecord({
        "ephemeral-public": masked.ephemeral_public,
        "signature": masked.signature,
        "node-key-fingerprint": masked.node_key_fingerprint,
        "clipped-coordinates": masked.clipped,
    })
    return [masked.masked], envelope
