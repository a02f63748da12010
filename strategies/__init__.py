"""Pure aggregation logic for asynchronous federated learning.

Numpy arrays in, numpy arrays out: no Flower transport and no training code, so that
every rule here can be checked against its reference semantics (docs/architecture.md, "Reference semantics").
"""

from strategies.base import AsyncStrategy, ClientUpdate, Outcome, Receipt
from strategies.buffer import WeightedSumBuffer
from strategies.fedasync import FedAsync
from strategies.fedbuff import FedBuff
from strategies.options import StrategyOptions
from strategies.registry import STRATEGIES, build_strategy
from strategies.server_opt import (
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
)

__all__ = [
    "STRATEGIES",
    "AsyncStrategy",
    "ClientUpdate",
    "FedAsync",
    "FedBuff",
    "Outcome",
    "Receipt",
    "ServerAdagrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSGD",
    "ServerYogi",
    "StrategyOptions",
    "WeightedSumBuffer",
    "build_strategy",
]
