"""A ClientApp that lies, one lie per message, in the order of :data:`LIES` (then again).

Each lie is something an honest reply of the project's ClientApp never holds, and each one
must end refused, clipped or dropped by the server, and counted:

- ``huge-count``: an ordinary small delta claiming ``num-examples = 10**15`` (refused: num-examples);
- ``other-format``: another app's records (Flower's legacy parameters/fit-metrics names; missing-field);
- ``other-model``: a reply in the right format carrying another model's arrays (shape);
- ``trailing-bytes``: the right arrays with a payload hidden after each one's data (encoding);
- ``lying-fields``: a small delta with NaN, Inf and negative metrics and a device record of the
  wrong type (accepted; the four fields dropped);
- ``weight-at-bound``: a small delta claiming just under the training split's size (accepted,
  its example weight clipped to ``max-example-weight``);
- ``big-step``: a delta just inside ``max-update-norm`` claiming as many examples (accepted,
  clipped, and the buffer it lands in refused by the step guard).
"""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

LIES = ("huge-count", "other-format", "other-model", "trailing-bytes", "lying-fields", "weight-at-bound", "big-step")
CLAIMED_AT_BOUND = 1400  # the digits training split holds 1,438 rows: within the bound, far above a partition
BIG_STEP_NORM = 900.0  # max-update-norm is 1000 by default
STATE = "hostile-position"

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Answer with the next lie; the position survives across messages in ``context.state``."""
    record = context.state.metric_records.get(STATE)
    position = int(record["position"]) if record is not None else 0
    context.state[STATE] = MetricRecord({"position": position + 1})
    model = msg.content.array_records["arrays"].to_numpy_ndarrays()
    return Message(lie(LIES[position % len(LIES)], model, position), reply_to=msg)


def lie(kind: str, model: list[np.ndarray], seed: int) -> RecordDict:
    """The reply content of lie ``kind`` for a task carrying ``model``."""
    rng = np.random.default_rng(seed)
    small = _scaled([rng.normal(size=a.shape).astype(np.float32) for a in model], 0.5)
    device = ConfigRecord({"device-tier": "high", "device-kind": "cpu"})
    honest_metrics = {"train-loss": 0.3, "train-seconds": 0.1}
    if kind == "huge-count":
        return _reply(ArrayRecord(small), MetricRecord({"num-examples": 10**15, **honest_metrics}), device)
    if kind == "other-format":
        return RecordDict({"parameters": ArrayRecord(small), "fit_metrics": ConfigRecord({"num_examples": 100})})
    if kind == "other-model":  # a small CNN's layers where the MLP's are
        other = [
            np.zeros((8, 1, 3, 3), np.float32),
            np.zeros(8, np.float32),
            np.zeros((10, 72), np.float32),
            np.zeros(10, np.float32),
        ]
        return _reply(ArrayRecord(other), MetricRecord({"num-examples": 100, **honest_metrics}), device)
    if kind == "trailing-bytes":
        padded = {str(i): _npy_with_trailer(a, b"hidden payload") for i, a in enumerate(small)}
        return _reply(ArrayRecord(padded), MetricRecord({"num-examples": 100, **honest_metrics}), device)
    if kind == "lying-fields":
        metrics = MetricRecord(
            {"num-examples": 100, "train-seconds": math.nan, "train-loss": math.inf, "dp-epsilon": -1.0}
        )
        return RecordDict(
            {"arrays": ArrayRecord(small), "metrics": metrics, "device": MetricRecord({"device-tier": 1.0})}
        )
    if kind == "weight-at-bound":
        return _reply(ArrayRecord(small), MetricRecord({"num-examples": CLAIMED_AT_BOUND, **honest_metrics}), device)
    if kind == "big-step":
        big = _scaled([rng.normal(size=a.shape).astype(np.float32) for a in model], BIG_STEP_NORM)
        return _reply(ArrayRecord(big), MetricRecord({"num-examples": CLAIMED_AT_BOUND, **honest_metrics}), device)
    raise ValueError(f"unknown lie {kind!r}")


def _reply(arrays: ArrayRecord, metrics: MetricRecord, device: ConfigRecord) -> RecordDict:
    return RecordDict({"arrays": arrays, "metrics": metrics, "device": device})


def _scaled(arrays: list[np.ndarray], norm: float) -> list[np.ndarray]:
    """``arrays`` scaled so that their joint L2 norm is ``norm``."""
    current = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))
    return [(a * (norm / current)).astype(np.float32) for a in arrays]


def _npy_with_trailer(array: np.ndarray, trailer: bytes) -> Array:
    """A fresh Array whose .npy payload is followed by ``trailer`` (``np.load`` would ignore it)."""
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Array(
        dtype=str(array.dtype), shape=tuple(array.shape), stype="numpy.ndarray", data=buffer.getvalue() + trailer
    )
