"""The empty ClientApp: reply at once with a zero update shaped like the model it received.

It imports only Flower and numpy, so a round trip through it is Flower's own cost:
SuperNode poll, ClientApp process start, message transport.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """No training: a zero delta, one example, tier "high" (what the project's loop accepts)."""
    received = msg.content.array_records["arrays"].to_numpy_ndarrays()
    return Message(RecordDict({
        "arrays": ArrayRecord([np.zeros_like(a) for a in received]),
        "metrics": MetricRecord({"num-examples": 1, "train-seconds": 0.0}),
        "device": ConfigRecord({"device-tier": "high"}),
    }), reply_to=msg)
