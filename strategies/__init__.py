"""Pure aggregation logic for asynchronous federated learning.

Numpy arrays in, numpy arrays out: no Flower transport and no training code, so that
every rule here can be checked against its reference semantics (DESIGN.md §4).
"""

from strategies.base import AsyncStrategy, ClientUpdate, Outcome, Receipt
from strategies.buffer import WeightedSumBuffer
from strategies.fedbuff import FedBuff, FedBuffConfig
from strategies.server_opt import ServerSGD, ServerSGDConfig
from strategies.weights import example_weight, staleness_weight

__all__ = [
    "AsyncStrategy",
    "ClientUpdate",
    "FedBuff",
    "FedBuffConfig",
    "Outcome",
    "Receipt",
    "ServerSGD",
    "ServerSGDConfig",
    "WeightedSumBuffer",
    "example_weight",
    "staleness_weight",
]
