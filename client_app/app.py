"""ClientApp: train the received model on this node's partition and return the delta.

Each message starts a fresh process in Flower 1.41, so the partition is computed once
per run and kept in ``context.state``; later messages skip scikit-learn and datasets.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.node import NodeProfile
from fedbuff.settings import RunSettings

log = logging.getLogger(__name__)
app = ClientApp()

PARTITION_KEY = "partition"


def local_partition(context: Context, settings: RunSettings, node: NodeProfile) -> tuple[np.ndarray, np.ndarray]:
    """This node's training data, cached across the run's messages in ``context.state``."""
    cached = context.state.array_records.get(PARTITION_KEY)
    if cached is not None:
        features, labels = cached.to_numpy_ndarrays()
        return features, labels
    from fedbuff.data import dirichlet_partition, load_digits_split

    train, _ = load_digits_split(settings.seed, settings.test_fraction)
    part = dirichlet_partition(
        train, node.partition_id, node.num_partitions, settings.dirichlet_alpha, settings.seed
    )
    context.state[PARTITION_KEY] = ArrayRecord([part.features, part.labels])
    return part.features, part.labels


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
    features, labels = local_partition(context, settings, node)

    dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
    config = msg.content.config_records.get("config", {})
    # Our loop sends server-version; Flower's own strategies send server-round.
    version = int(config.get("server-version", config.get("server-round", 0)))
    reply_weights = config.get("reply", "delta") == "weights"
    model = build_model(settings.hidden_units, settings.seed)
    set_weights(model, dispatched)
    device = pick_device()
    train_started = time.monotonic()
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

    target = node.emulated_seconds(
        train_seconds, batches, settings.emulated_step_seconds, settings.speed_ratios()
    )
    if target > train_seconds:
        time.sleep(target - train_seconds)

    update = _inject_fault(node.test_fault, update)
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        "device": ConfigRecord({"device-tier": node.device_tier, "device-kind": device.type}),
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
        }
    )
    return Message(RecordDict(records), reply_to=msg)


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


def _inject_fault(fault: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Corrupt the reply on purpose (``test-fault`` node config; tests only)."""
    if fault == "nan":
        arrays[0] = arrays[0].copy()
        arrays[0].flat[0] = np.nan
    elif fault == "shape":
        arrays[0] = arrays[0][:-1]
    return arrays
