"""The empty ClientApp: reply at once with a zero update shaped like the model it received.

It imports only Flower, numpy and the reply's keys (``fedbuff.protocol``, which imports
nothing else), so a round trip through it is Flower's own cost:
SuperNode poll, ClientApp process start, message transport.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedbuff import protocol

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """No training: a zero delta, one example, tier "high" (what the project's loop accepts)."""
    received = msg.content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    reply = protocol.reply_content(
        [np.zeros_like(a) for a in received],
        {protocol.NUM_EXAMPLES: 1, protocol.TRAIN_SECONDS: 0.0},
        {protocol.DEVICE_TIER: "high"},
    )
    return Message(reply, reply_to=msg)
