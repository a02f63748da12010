"""Device model: how long an emulated phone takes for a task, when it is online, and how
long its link takes to move a payload (docs/heterogeneity.md). Everything is deterministic from a
seed, the node index and the task index, so a rerun emulates the same federation and the
order in which a node draws does not matter.

Task duration::

    base   = ratio[tier] × max(measured, batches × step_seconds)     (NodeProfile's rule)
    factor ~ jitter distribution (1 when jitter is "none")
    task   = base × factor  (+ link seconds for download + upload, when a bandwidth is set)

Jitter (``task-jitter`` knob, ``KIND`` or ``KIND:key=value,...``):

- ``none``: factor 1 (the default; today's behaviour).
- ``lognormal:mu=1,sigma=0.6``: FedScale's lognormal(1, 0.6); raw mean exp(mu + sigma²/2)
  ≈ 3.25.
- ``halfnormal:min=1,sd=0.5``: FLSim's per-user half-normal, ``min + |N(0, sd)|``.
- ``exponential:mean=1``: FLSim's per-user exponential.

``normalize=1`` (default) divides the factor by its mean, so that jitter adds spread but
the tiers' *mean* durations keep the measured speed ratios; ``normalize=0`` uses the raw
distribution (FedScale's lognormal then makes every task ~3.25× longer).

Availability (``availability`` knob): ``always`` (default) or ``onoff:online=600,offline=120``
— alternating online / offline periods with exponentially distributed lengths of those
means (seconds), starting online at a seeded phase. A task pauses while its node is
offline (:meth:`Availability.finish_time`) or counts as dropped (:meth:`Availability.interrupted`).

Link (``link-mbps`` knob): ``""`` (off) or ``high=50,mid=20,low=5`` megabits per second per
tier, plus ``link-latency-seconds`` per transfer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

TIERS = ("high", "mid", "low")
JITTER_KINDS = ("none", "lognormal", "halfnormal", "exponential")
JITTER_DEFAULTS: dict[str, dict[str, float]] = {
    "none": {},
    "lognormal": {"mu": 1.0, "sigma": 0.6, "normalize": 1.0},
    "halfnormal": {"min": 1.0, "sd": 0.5, "normalize": 1.0},
    "exponential": {"mean": 1.0, "normalize": 1.0},
}
_STREAM_TASK, _STREAM_AVAILABILITY = 0x7A5C, 0xA7A1


class DeviceModelError(ValueError):
    """A device-model knob is malformed; the message names it."""


def _parse_spec(knob: str, text: str) -> tuple[str, dict[str, float]]:
    kind, _, rest = text.strip().partition(":")
    params: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise DeviceModelError(f"{knob}: {item!r} is not KEY=NUMBER") from None
        if not sep or not math.isfinite(params[key.strip()]):
            raise DeviceModelError(f"{knob}: {item!r} is not KEY=NUMBER")
    return kind.strip(), params


@dataclass(frozen=True)
class Jitter:
    """A multiplicative duration factor; :meth:`mean` / :meth:`variance` are of the factor
    actually returned (after normalisation)."""

    kind: str = "none"
    params: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Jitter:
        kind, given = _parse_spec("task-jitter", text or "none")
        if kind not in JITTER_KINDS:
            raise DeviceModelError(f"task-jitter: kind {kind!r}; choose one of {JITTER_KINDS}")
        unknown = set(given) - set(JITTER_DEFAULTS[kind])
        if unknown:
            raise DeviceModelError(f"task-jitter: {kind} takes {sorted(JITTER_DEFAULTS[kind])}, not {sorted(unknown)}")
        params = {**JITTER_DEFAULTS[kind], **given}
        jitter = cls(kind, params)
        jitter._check()
        return jitter

    def _check(self) -> None:
        p = self.params
        if self.kind == "lognormal" and not p["sigma"] >= 0:
            raise DeviceModelError("task-jitter: lognormal sigma must be >= 0")
        if self.kind == "halfnormal" and not (p["sd"] >= 0 and p["min"] >= 0 and p["min"] + p["sd"] > 0):
            raise DeviceModelError("task-jitter: halfnormal needs min >= 0, sd >= 0, not both 0")
        if self.kind == "exponential" and not p["mean"] > 0:
            raise DeviceModelError("task-jitter: exponential mean must be > 0")

    def raw_moments(self) -> tuple[float, float]:
        """Mean and variance of the un-normalised factor."""
        p = self.params
        if self.kind == "lognormal":
            mu, s2 = p["mu"], p["sigma"] ** 2
            return math.exp(mu + s2 / 2), (math.exp(s2) - 1) * math.exp(2 * mu + s2)
        if self.kind == "halfnormal":
            return p["min"] + p["sd"] * math.sqrt(2 / math.pi), p["sd"] ** 2 * (1 - 2 / math.pi)
        if self.kind == "exponential":
            return p["mean"], p["mean"] ** 2
        return 1.0, 0.0

    @property
    def _scale(self) -> float:
        return 1.0 / self.raw_moments()[0] if self.params.get("normalize", 0.0) else 1.0

    def mean(self) -> float:
        return self.raw_moments()[0] * self._scale

    def variance(self) -> float:
        return self.raw_moments()[1] * self._scale**2

    def sample(self, rng: np.random.Generator, size: int | None = None) -> float | np.ndarray:
        p = self.params
        raw: float | np.ndarray
        if self.kind == "lognormal":
            raw = rng.lognormal(p["mu"], p["sigma"], size)
        elif self.kind == "halfnormal":
            raw = p["min"] + np.abs(rng.normal(0.0, p["sd"], size))
        elif self.kind == "exponential":
            raw = rng.exponential(p["mean"], size)
        else:
            raw = np.ones(size) if size is not None else 1.0
        return raw * self._scale if size is not None else float(raw) * self._scale


@dataclass(frozen=True)
class Availability:
    """Alternating online / offline periods of one node (seconds since the run started)."""

    mean_online: float = math.inf
    mean_offline: float = 0.0
    seed: int = 0
    node: int = 0

    @classmethod
    def parse(cls, text: str, seed: int, node: int) -> Availability:
        kind, params = _parse_spec("availability", text or "always")
        if kind == "always" and not params:
            return cls(seed=seed, node=node)
        if kind != "onoff" or set(params) != {"online", "offline"} or min(params.values()) <= 0:
            raise DeviceModelError(
                f"availability: {text!r}; write 'always' or 'onoff:online=SECONDS,offline=SECONDS' (both > 0)"
            )
        return cls(params["online"], params["offline"], seed, node)

    @property
    def always(self) -> bool:
        return math.isinf(self.mean_online) or self.mean_offline == 0

    def windows(self, horizon: float) -> list[tuple[float, float]]:
        """Online windows ``[start, end)`` covering ``[0, horizon)``, the same on every call."""
        if self.always:
            return [(0.0, math.inf)]
        rng = np.random.default_rng([self.seed, self.node, _STREAM_AVAILABILITY])
        # Seeded phase: the node is already part-way through an online period at t=0.
        t = -rng.uniform(0.0, self.mean_online)
        out = []
        while t < horizon:
            online = rng.exponential(self.mean_online)
            start, end = t, t + online
            if end > 0:
                out.append((max(start, 0.0), end))
            t = end + rng.exponential(self.mean_offline)
        return out

    def is_online(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.windows(t + 1.0))

    def finish_time(self, start: float, busy_seconds: float) -> float:
        """When a task started at ``start`` ends if it needs ``busy_seconds`` online time and
        pauses while the node is offline (it waits for the node to come online first)."""
        if self.always:
            return start + busy_seconds
        horizon = start + busy_seconds + 2 * (self.mean_online + self.mean_offline)
        left, t = busy_seconds, start
        while True:
            for a, b in self.windows(horizon):
                if b <= t:
                    continue
                t = max(t, a)
                if t + left <= b:
                    return t + left
                left -= b - t
                t = b
            horizon *= 2

    def interrupted(self, start: float, busy_seconds: float) -> bool:
        """Whether the node goes offline (or is offline) during ``[start, start + busy)``."""
        if self.always:
            return False
        end = start + busy_seconds
        return not any(a <= start and end <= b for a, b in self.windows(end + 1.0))

    def online_fraction(self) -> float:
        return 1.0 if self.always else self.mean_online / (self.mean_online + self.mean_offline)


def parse_tier_values(knob: str, text: str, minimum: float = 0.0) -> dict[str, float]:
    """``"high=50,mid=20,low=5"`` -> per-tier numbers (all three tiers, each > minimum)."""
    _, params = _parse_spec(knob, ":" + text)
    if set(params) != set(TIERS) or any(not v > minimum for v in params.values()):
        raise DeviceModelError(f"{knob}: {text!r} is not TIER=NUMBER for each of {TIERS} with NUMBER > {minimum}")
    return params


@dataclass(frozen=True)
class DeviceModel:
    """The run-wide device model; :meth:`for_node` gives one node's deterministic clock."""

    ratios: Mapping[str, float]
    step_seconds: float = 0.05
    jitter: Jitter = field(default_factory=Jitter)
    availability: str = "always"
    link_mbps: Mapping[str, float] | None = None
    link_latency_seconds: float = 0.0
    seed: int = 42

    @classmethod
    def from_knobs(
        cls,
        *,
        tier_speed_ratios: Mapping[str, float],
        emulated_step_seconds: float,
        task_jitter: str = "none",
        availability: str = "always",
        link_mbps: str = "",
        link_latency_seconds: float = 0.0,
        seed: int = 42,
    ) -> DeviceModel:
        """Build from the run-config knobs (``settings.speed_ratios()`` for the ratios)."""
        Availability.parse(availability, seed, 0)  # validate once, early
        if link_latency_seconds < 0:
            raise DeviceModelError("link-latency-seconds must be >= 0")
        return cls(
            dict(tier_speed_ratios),
            emulated_step_seconds,
            Jitter.parse(task_jitter),
            availability,
            parse_tier_values("link-mbps", link_mbps) if link_mbps else None,
            link_latency_seconds,
            seed,
        )

    def for_node(self, node: int, tier: str) -> NodeClock:
        return NodeClock(self, node, tier)


@dataclass(frozen=True)
class NodeClock:
    """One node's emulated durations; ``node`` is its partition id, ``tier`` its device tier
    (``real`` = no emulation: measured time, no jitter, no link)."""

    model: DeviceModel
    node: int
    tier: str

    def _rng(self, task: int) -> np.random.Generator:
        return np.random.default_rng([self.model.seed, self.node, task, _STREAM_TASK])

    @property
    def availability(self) -> Availability:
        return Availability.parse(self.model.availability, self.model.seed, self.node)

    def compute_seconds(self, task: int, measured: float, batches: int) -> float:
        """Emulated training time of task number ``task`` (any int unique to the task)."""
        if self.tier not in self.model.ratios:
            return measured
        base = self.model.ratios[self.tier] * max(measured, batches * self.model.step_seconds)
        return base * float(self.model.jitter.sample(self._rng(task)))

    def transfer_seconds(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` over this tier's link (0 without a bandwidth)."""
        if self.model.link_mbps is None or self.tier not in self.model.link_mbps:
            return 0.0
        return self.model.link_latency_seconds + 8.0 * nbytes / (self.model.link_mbps[self.tier] * 1e6)

    def task_seconds(self, task: int, measured: float, batches: int, payload_bytes: int = 0) -> float:
        """Compute time plus download and upload of ``payload_bytes`` each."""
        return self.compute_seconds(task, measured, batches) + 2 * self.transfer_seconds(payload_bytes)
