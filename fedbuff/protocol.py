"""The records of a train task and of its reply, between the ServerApp and the ClientApp.

One contract, imported by both sides (and by the benchmarks' stand-in apps), so that a key is
spelled in one place. A task (ServerApp → ClientApp) is a RecordDict of

- ``arrays``: the global model of the task's version;
- ``config``: ``server-version`` (Flower's own strategies send ``server-round``), under secure
  aggregation ``secagg-service-key``, ``reply="weights"`` when Flower's FedAvg wants the
  trained weights instead of a delta, and ``local-steps`` when the server's scheduler chose
  this task's local steps (fedcompass, compute-aware fedbuff; it overrides the run config's).

A reply (ClientApp → ServerApp) is a RecordDict of

- ``arrays``: the update (the delta, the trained weights, or one masked ring vector);
- ``metrics``: ``num-examples`` (required: it weights the update) and optional numbers the
  server checks and reports (training loss and seconds, task seconds, the DP-SGD ε and σ);
- ``device``: where the update was trained (tier, torch device kind, partition id and count);
- ``secagg``: under secure aggregation, the mask's envelope (ephemeral public key, signature,
  node-key fingerprint, clipped coordinates).

A node query (ServerApp → ClientApp, ``MessageType.QUERY``, empty content) asks a node which
partition it holds; the answer is a ``device`` record of ``partition-id`` and ``num-partitions``
(the virtual clock asks each simulated node once, docs/simulation.md).

What the server believes of each field, and how it checks it, is ``server_app.reply_fields``
and ``server_app.validation``. The ClientApp ↔ warm-trainer frames are
``client_app.trainer_protocol``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, MetricRecord, RecordDict

# record names
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
DEVICE = "device"
SECAGG = "secagg"

# task config
SERVER_VERSION = "server-version"
SERVER_ROUND = "server-round"  # what Flower's own strategies send instead
REPLY = "reply"
REPLY_WEIGHTS = "weights"  # Flower's FedAvg averages whole models
REPLY_DELTA = "delta"  # the default: the asynchronous strategies add deltas
SECAGG_SERVICE_KEY = "secagg-service-key"
LOCAL_STEPS = "local-steps"  # the scheduler's steps for this task (the run config's key, per task)

# reply metrics
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
TASK_SECONDS = "task-seconds"
DP_EPSILON = "dp-epsilon"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"

# reply device record (partition-id and num-partitions are also the node config's keys)
DEVICE_TIER = "device-tier"
DEVICE_KIND = "device-kind"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# reply secure-aggregation envelope
EPHEMERAL_PUBLIC = "ephemeral-public"
SIGNATURE = "signature"
NODE_KEY_FINGERPRINT = "node-key-fingerprint"
CLIPPED_COORDINATES = "clipped-coordinates"


def task_content(
    model: Sequence[np.ndarray], version: int, extra: Mapping[str, ConfigRecordValues] | None = None
) -> RecordDict:
    """A train task: the model of ``version`` and its config (``extra`` first, the version last)."""
    config = ConfigRecord({**(extra or {}), SERVER_VERSION: version})
    return RecordDict({ARRAYS: ArrayRecord(list(model)), CONFIG: config})


def task_version(config: Mapping[str, object]) -> int:
    """The model version a task was sent at (``server-version``, else ``server-round``, else 0).

    Raises TypeError or ValueError for a value that is not a number."""
    sent = config.get(SERVER_VERSION, config.get(SERVER_ROUND, 0))
    if not isinstance(sent, int | float | str | bytes):  # a ConfigRecord may also hold lists
        raise TypeError(f"{SERVER_VERSION} / {SERVER_ROUND} must be a number, got {sent!r}")
    return int(sent)


def task_local_steps(config: Mapping[str, object]) -> int | None:
    """The local steps the server planned for this task (None: the run config's knobs decide).

    Raises ValueError for a value that is not an integer >= 1."""
    steps = config.get(LOCAL_STEPS)
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{LOCAL_STEPS} must be an integer >= 1, got {steps!r}")
    return steps


def wants_weights(config: Mapping[str, object]) -> bool:
    """Whether the task asks for the trained weights (Flower's FedAvg) instead of a delta."""
    return config.get(REPLY, REPLY_DELTA) == REPLY_WEIGHTS


def reply_content(
    update: Sequence[np.ndarray],
    metrics: Mapping[str, int | float],
    device: Mapping[str, int | str],
    envelope: ConfigRecord | None = None,
) -> RecordDict:
    """A train reply: the update, its metrics (``num-examples`` among them), where it was trained
    and, under secure aggregation, the mask's envelope."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        DEVICE: ConfigRecord(dict(device)),
        ARRAYS: ArrayRecord(list(update)),
        METRICS: MetricRecord(dict(metrics)),
    }
    if envelope is not None:
        records[SECAGG] = envelope
    return RecordDict(records)


def evaluation_content(num_examples: int, metrics: Mapping[str, float], device_tier: str) -> RecordDict:
    """An evaluate reply: the held-out example count and the task's metrics (means over those
    examples), and the node's tier; no arrays, nothing about any single example."""
    return RecordDict(
        {
            METRICS: MetricRecord({NUM_EXAMPLES: num_examples, **metrics}),
            DEVICE: ConfigRecord({DEVICE_TIER: device_tier}),
        }
    )


def identity_content(node_config: Mapping[str, object], num_examples: int) -> RecordDict:
    """A node query's answer: the partition id and count of the node's config, and how many
    training examples the node holds (the virtual clock's batches per task come from it)."""
    partition, count = node_config.get(PARTITION_ID), node_config.get(NUM_PARTITIONS)
    if not (isinstance(partition, int) and isinstance(count, int) and 0 <= partition < count):
        raise ValueError(f"node config has no valid {PARTITION_ID} / {NUM_PARTITIONS}: {partition!r} / {count!r}")
    return RecordDict(
        {DEVICE: ConfigRecord({PARTITION_ID: partition, NUM_PARTITIONS: count, NUM_EXAMPLES: num_examples})}
    )


def read_identity(content: RecordDict) -> tuple[int, int, int] | None:
    """``(partition id, partition count, training examples)`` of a node query's answer; None if malformed."""
    record = content.config_records.get(DEVICE)
    if record is None:
        return None
    partition, count, examples = record.get(PARTITION_ID), record.get(NUM_PARTITIONS), record.get(NUM_EXAMPLES)
    known = isinstance(partition, int) and isinstance(count, int) and 0 <= partition < count
    if known and isinstance(examples, int) and not isinstance(examples, bool) and examples >= 0:
        return partition, count, examples  # type: ignore[return-value]
    return None
