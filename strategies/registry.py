"""Strategy names and how each is built from the options: one line per strategy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from strategies.base import Arrays, AsyncStrategy
from strategies.fedasync import FedAsync
from strategies.fedbuff import FedBuff

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions

StrategyFactory = Callable[["StrategyOptions", Arrays, int, "FlushPrivacy | None"], AsyncStrategy]

# Run server-side by Flower's own FedAvg, round by round; no AsyncStrategy behind it.
FLOWER_FEDAVG = "flower-fedavg"


def sync(options: StrategyOptions, initial: Arrays, concurrency: int,
         privacy: FlushPrivacy | None = None) -> FedBuff:
    """The synchronous baseline, strategy side: FedBuff with K = concurrency, no staleness weight.

    The server loop supplies the barrier (every dispatched task returns before the next
    dispatch), so each buffer holds one update per client, all from the same model.
    """
    same = dataclasses.replace(options, buffer_size=concurrency, staleness_weight="constant")
    return FedBuff(initial, same, privacy)


STRATEGIES: Mapping[str, StrategyFactory] = MappingProxyType({
    "fedbuff": lambda options, initial, concurrency, privacy=None: FedBuff(initial, options, privacy),
    # user-level DP needs a buffer to noise: settings refuse it with fedasync
    "fedasync": lambda options, initial, concurrency, privacy=None: FedAsync(initial, options),
    "sync": sync,
})


def build_strategy(options: StrategyOptions, initial: Arrays, concurrency: int,
                   privacy: FlushPrivacy | None = None) -> AsyncStrategy:
    """The strategy ``options.strategy`` names, owning a copy of ``initial``.

    ``privacy`` adds user-level DP (accounting and central noise) at each flush.
    """
    if options.strategy == FLOWER_FEDAVG:
        raise ValueError(
            f"strategy {FLOWER_FEDAVG!r} is driven by Flower's own FedAvg in the ServerApp, "
            "not by an AsyncStrategy"
        )
    return STRATEGIES[options.strategy](options, initial, concurrency, privacy)
