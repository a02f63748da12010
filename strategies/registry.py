"""The strategies by name: how each is built from the options and what it can do, one entry each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from strategies.base import Arrays, AsyncStrategy
from strategies.fedasync import FedAsync
from strategies.fedbuff import FedBuff

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions
    from strategies.ring import RingCodec
    from strategies.secure_fedbuff import Unmask

StrategyFactory = Callable[["StrategyOptions", Arrays, int, "FlushPrivacy | None"], AsyncStrategy]
SecureFactory = Callable[["StrategyOptions", Arrays, "RingCodec", "Unmask", "FlushPrivacy | None"], AsyncStrategy]

# Run server-side by Flower's own FedAvg, round by round; no AsyncStrategy behind it.
FLOWER_FEDAVG = "flower-fedavg"


@dataclass(frozen=True)
class StrategySpec:
    """One strategy's entry: how it is built and what the ServerApp and the settings must know.

    ``flush``: how many accepted updates make one server step, from (``buffer-size``,
    ``concurrency``) — at most: a drop-out makes a barrier round smaller; user-level DP sizes
    its distributed noise shares from it. ``barrier``: every dispatched task returns before the
    next dispatch (the loop's round). ``user_dp``: it noises a buffer flush, so user-level DP
    can run on it. ``build_secure``: its masked variant under secure aggregation (a buffer that
    only adds), if it has one. ``scheduled``: it plans each task's local steps per node
    (:mod:`strategies.scheduling`), so a node must run one task at a time. ``build`` is None
    for Flower's own FedAvg, which the ServerApp drives round by round; it has no checkpoint
    to resume from.
    """

    build: StrategyFactory | None
    flush: Callable[[int, int], int]
    barrier: bool = False
    user_dp: bool = False
    build_secure: SecureFactory | None = None
    scheduled: bool = False

    @property
    def run_by_flower(self) -> bool:
        """Flower's own round loop runs it, not the asynchronous loop (and nothing resumes it)."""
        return self.build is None


def sync(options: StrategyOptions, initial: Arrays, concurrency: int, privacy: FlushPrivacy | None = None) -> FedBuff:
    """The synchronous baseline, strategy side: FedBuff with K = concurrency, no staleness weight.

    The server loop supplies the barrier (every dispatched task returns before the next
    dispatch), so each buffer holds one update per client, all from the same model.
    """
    k = flush_size("sync", options.buffer_size, concurrency)
    same = dataclasses.replace(options, buffer_size=k, staleness_weight="constant")
    return FedBuff(initial, same, privacy)


def _fedbuff(
    options: StrategyOptions, initial: Arrays, concurrency: int, privacy: FlushPrivacy | None = None
) -> FedBuff:
    return FedBuff(initial, options, privacy)


def _secure_fedbuff(
    options: StrategyOptions, initial: Arrays, codec: RingCodec, unmask: Unmask, privacy: FlushPrivacy | None = None
) -> AsyncStrategy:
    from strategies.secure_fedbuff import SecureFedBuff  # imports the options: not at module load

    return SecureFedBuff(initial, options, codec, unmask, privacy)


def _fedasync(
    options: StrategyOptions, initial: Arrays, concurrency: int, privacy: FlushPrivacy | None = None
) -> FedAsync:
    # user-level DP needs a buffer to noise: the settings refuse it with fedasync (user_dp=False)
    return FedAsync(initial, options)


def _fedcompass(
    options: StrategyOptions, initial: Arrays, concurrency: int, privacy: FlushPrivacy | None = None
) -> AsyncStrategy:
    from strategies.fedcompass import FedCompass  # imports the secure variant: not at module load

    return FedCompass(initial, options, privacy)


def _secure_fedcompass(
    options: StrategyOptions, initial: Arrays, codec: RingCodec, unmask: Unmask, privacy: FlushPrivacy | None = None
) -> AsyncStrategy:
    from strategies.fedcompass import SecureFedCompass

    return SecureFedCompass(initial, options, codec, unmask, privacy)


REGISTRY: Mapping[str, StrategySpec] = MappingProxyType(
    {
        "fedbuff": StrategySpec(_fedbuff, flush=lambda k, concurrency: k, user_dp=True, build_secure=_secure_fedbuff),
        "fedasync": StrategySpec(_fedasync, flush=lambda k, concurrency: 1),
        "sync": StrategySpec(sync, flush=lambda k, concurrency: concurrency, barrier=True, user_dp=True),
        # a group aggregation holds at most the tasks in flight when its group formed
        "fedcompass": StrategySpec(
            _fedcompass,
            flush=lambda k, concurrency: concurrency,
            user_dp=True,
            build_secure=_secure_fedcompass,
            scheduled=True,
        ),
        FLOWER_FEDAVG: StrategySpec(None, flush=lambda k, concurrency: concurrency),
    }
)
# the asynchronous loop's strategies (Flower's FedAvg is not one)
STRATEGIES: tuple[str, ...] = tuple(name for name, spec in REGISTRY.items() if not spec.run_by_flower)
# the strategies that take compute-aware = true (fedcompass always schedules)
COMPUTE_AWARE = ("fedbuff",)


def spec_of(strategy: str) -> StrategySpec:
    """The registry entry of ``strategy``; ValueError for a name it does not hold."""
    try:
        return REGISTRY[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}") from None


def with_capability(capability: str) -> tuple[str, ...]:
    """The strategy names whose entry has ``capability`` (``barrier``, ``user_dp``, ``build_secure``)."""
    return tuple(name for name, spec in REGISTRY.items() if getattr(spec, capability))


def flush_size(strategy: str, buffer_size: int, concurrency: int) -> int:
    """How many accepted updates make one server step of ``strategy`` (:attr:`StrategySpec.flush`)."""
    return spec_of(strategy).flush(buffer_size, concurrency)


def build_strategy(
    options: StrategyOptions, initial: Arrays, concurrency: int, privacy: FlushPrivacy | None = None
) -> AsyncStrategy:
    """The strategy ``options.strategy`` names, owning a copy of ``initial``.

    ``privacy`` adds user-level DP (accounting and central noise) at each flush.
    """
    build = spec_of(options.strategy).build
    if build is None:
        raise ValueError(
            f"strategy {options.strategy!r} is driven by Flower's own FedAvg in the ServerApp, not by an AsyncStrategy"
        )
    return build(options, initial, concurrency, privacy)


def build_secure_strategy(
    options: StrategyOptions, initial: Arrays, codec: RingCodec, unmask: Unmask, privacy: FlushPrivacy | None = None
) -> AsyncStrategy:
    """The masked variant of ``options.strategy`` under secure aggregation (``unmask`` asks the
    mask service for a buffer's sum); ValueError when it has none."""
    build = spec_of(options.strategy).build_secure
    if build is None:
        raise ValueError(
            f"strategy {options.strategy!r} has no secure-aggregation variant "
            f"(those that do: {with_capability('build_secure')})"
        )
    return build(options, initial, codec, unmask, privacy)
