"""Typed run settings parsed from Flower's run config, validated once at start-up.

Every field maps to the ``[tool.flwr.app.config]`` key of the same name with ``_``
written as ``-``; pyproject.toml holds the defaults users see (a test keeps both equal).
The strategy and privacy knobs come from :class:`strategies.StrategyOptions`,
:class:`strategies.dp.UserDPOptions` and :class:`DPSGDOptions`, which this extends with the
loop, training, data, emulation and output knobs. Every check raises :class:`SettingsError`
(strategies/errors.py: the lowest layer that checks a knob).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedbuff.device_model import DeviceModel
from fedbuff.partitioners import DEFAULT_TIER_MIX, parse_tier_mix
from fedbuff.task import check_reference
from strategies import StrategyOptions
from strategies.dp import UserDPOptions, check_user_dp, distributed_share_std
from strategies.errors import SettingsError
from strategies.registry import flush_size, spec_of, with_capability
from strategies.ring import RingCodec

DEVICE_TIERS = ("high", "mid", "low")
FEDERATED_EVAL_MODES = ("auto", "on", "off")


def options_from_run_config(cls: Any, run_config: Mapping[str, object]) -> Any:
    """An options dataclass ``cls`` from a run config: field ``a_b`` takes key ``a-b``; keys it
    has no field for are ignored (other components' knobs); ``__post_init__`` checks the values."""
    # Any: a run config holds whatever the user wrote; __post_init__ checks every value's type.
    values: dict[str, Any] = {}
    for field in fields(cls):
        key = field.name.replace("_", "-")
        if key in run_config:
            value = run_config[key]
            # TOML writes 1 for 1.0: widen ints where the knob is a float.
            if isinstance(field.default, float) and type(value) is int:
                value = float(value)
            values[field.name] = value
    return cls(**values)


@dataclass(frozen=True)
class DPSGDOptions:
    """DP-SGD knobs (client_app/dp_sgd.py trains with them); field ``a_b`` is the run-config key ``a-b``.

    - ``dp_sgd``: switch.
    - ``dp_noise_multiplier``: σ, noise std / clip norm per step (used when no target ε).
    - ``dp_max_grad_norm``: C, the per-example gradient L2 clip.
    - ``dp_target_epsilon``: > 0: choose σ so that ONE message's local training (its epochs,
      or its ``local-steps``) costs this ε at ``dp-delta`` (Opacus' calibration); 0: use
      ``dp-noise-multiplier``. The client's cumulative ε keeps growing across messages.
    - ``dp_delta``: δ of the reported (ε, δ); should be well below 1 / partition size.
    """

    dp_sgd: bool = False
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_target_epsilon: float = 0.0
    dp_delta: float = 1e-5

    def __post_init__(self) -> None:
        def fail(key: str, requirement: str, value: object) -> None:
            raise SettingsError(f"{key} must be {requirement}, got {value!r}")

        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not isinstance(self.dp_sgd, bool):
            fail("dp-sgd", "a boolean", self.dp_sgd)
        if not (number(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            fail("dp-noise-multiplier", "a finite number >= 0", self.dp_noise_multiplier)
        if self.dp_sgd and self.dp_target_epsilon == 0 and self.dp_noise_multiplier == 0:
            fail("dp-noise-multiplier", "> 0 with dp-sgd on and no dp-target-epsilon", self.dp_noise_multiplier)
        if not (number(self.dp_max_grad_norm) and self.dp_max_grad_norm > 0):
            fail("dp-max-grad-norm", "a finite number > 0", self.dp_max_grad_norm)
        if not (number(self.dp_target_epsilon) and self.dp_target_epsilon >= 0):
            fail("dp-target-epsilon", "a finite number >= 0 (0: use dp-noise-multiplier)", self.dp_target_epsilon)
        if not (number(self.dp_delta) and 0 < self.dp_delta < 1):
            fail("dp-delta", "in (0, 1)", self.dp_delta)


@dataclass(frozen=True)
class RunSettings(StrategyOptions, UserDPOptions, DPSGDOptions):
    """All knobs of a run: strategy, user-level DP and DP-SGD (inherited), loop, client
    training, data, emulation, secure aggregation, observability, outputs."""

    # asynchronous loop (server_app)
    concurrency: int = 6
    tasks_per_node: int = 1
    max_server_steps: int = 30
    target_accuracy: float = 0.0
    # a target on any metric the task declares (higher or lower is better, as the task says)
    target_metric: str = ""
    target_value: float = 0.0
    max_wall_seconds: float = 900.0
    eval_every: int = 5
    # federated evaluation (server_app.federated_eval): auto = when the server holds no data
    federated_eval: str = "auto"
    federated_eval_fraction: float = 0.34
    task_ttl_seconds: float = 120.0
    max_update_norm: float = 1000.0
    max_update_bytes: int = 0
    # the largest num-examples a reply may claim (lowered to the training split's size)
    max_num_examples: int = 100_000
    error_backoff_seconds: float = 5.0
    error_backoff_max_seconds: float = 300.0
    # simulation only: apply replies in order of the device model's virtual time (docs/simulation.md)
    virtual_clock: bool = False
    # local training (client_app)
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    client_lr: float = 0.5
    # the node's warm trainer (client_app.trainer, docs/architecture.md)
    warm_trainer: bool = True
    warm_trainer_idle_seconds: float = 120.0
    # the task: a built-in one or module:object in the app (fedbuff.task; docs/tasks.md)
    task: str = "digits"
    # tier assignment and seed (fedbuff.partitioners; docs/heterogeneity.md)
    tier_mix: str = DEFAULT_TIER_MIX
    seed: int = 42
    # device-tier emulation (fedbuff.device_model)
    tier_speed_ratios: str = "high=1.0,mid=3.3,low=9.2"
    emulated_step_seconds: float = 0.05
    task_jitter: str = "none"
    availability: str = "always"
    link_mbps: str = ""
    link_latency_seconds: float = 0.0
    # pre-trained start (server_app.pretrain)
    initial_weights: str = ""
    warmup_steps: int = 0
    warmup_fraction: float = 0.1
    # secure aggregation
    secagg: bool = False
    secagg_address: str = "127.0.0.1:9095"
    secagg_scale_bits: int = 24
    secagg_clip: float = 8.0
    secagg_weight_scale: int = 65536
    secagg_max_weight: int = 262144
    secagg_timeout_seconds: float = 120.0
    # observability
    metrics_enabled: bool = True
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9464
    straggler_deadline_seconds: float = 60.0
    write_plots: bool = True
    # outputs
    run_dir: str = ""
    # fault tolerance (server_app.checkpoint)
    checkpoint_every: int = 5
    resume_from: str = ""

    def __post_init__(self) -> None:
        try:
            StrategyOptions.__post_init__(self)
            UserDPOptions.__post_init__(self)
            DPSGDOptions.__post_init__(self)
            self._at_least("concurrency", 1)
            self._at_least("tasks_per_node", 1)
            self._at_least("max_server_steps", 1)
            self._within("target_accuracy", "[0, 1]", 0 <= self.target_accuracy <= 1)
            if self.target_metric and self.target_accuracy:
                self._fail("target_metric", "empty when target-accuracy is set (one target)")
            self._within("target_value", "finite", math.isfinite(self.target_value))
            self._at_least("max_wall_seconds", 0, strict=True)
            self._at_least("eval_every", 1)
            self._one_of("federated_eval", FEDERATED_EVAL_MODES)
            self._within("federated_eval_fraction", "(0, 1]", 0 < self.federated_eval_fraction <= 1)
            self._at_least("task_ttl_seconds", 0, strict=True)
            self._at_least("max_update_norm", 0)
            self._at_least("max_update_bytes", 0)
            self._at_least("max_num_examples", 1)
            self._at_least("error_backoff_seconds", 0)
            if not self.error_backoff_seconds <= self.error_backoff_max_seconds < math.inf:
                self._fail("error_backoff_max_seconds", ">= error-backoff-seconds and finite")
            self._at_least("local_epochs", 1)
            self._at_least("local_steps", 0)
            self._at_least("batch_size", 1)
            self._at_least("client_lr", 0, strict=True)
            self._within("warm_trainer_idle_seconds", "(0, 86400]", 0 < self.warm_trainer_idle_seconds <= 86400)
            if (why := check_reference(self.task)) is not None:
                self._fail("task", why or "a string")
            parse_tier_mix(self.tier_mix)
            self._at_least("emulated_step_seconds", 0)
            self.device_model()
            self._at_least("warmup_steps", 0)
            self._within("warmup_fraction", "(0, 1)", 0 < self.warmup_fraction < 1)
            if self.initial_weights and self.warmup_steps:
                self._fail("warmup_steps", "0 when initial-weights is set (one pre-trained start)")
            self._within("metrics_port", "[0, 65535]", 0 <= self.metrics_port <= 65535)
            self._at_least("straggler_deadline_seconds", 0)
            self.speed_ratios()
            self._at_least("secagg_timeout_seconds", 0, strict=True)
            self._at_least("checkpoint_every", 0)
            self._check_resume()
            if self.virtual_clock and spec_of(self.strategy).run_by_flower:
                self._fail(
                    "virtual_clock", "false with Flower's own FedAvg (its rounds do not run on the loop's clock)"
                )
            if (spec_of(self.strategy).scheduled or self.compute_aware) and self.tasks_per_node != 1:
                self._fail(
                    "tasks_per_node",
                    "1 with fedcompass or compute-aware (a queued task's round trip is not the node's speed)",
                )
            if self.secagg:
                if spec_of(self.strategy).build_secure is None:
                    masked = with_capability("build_secure")
                    self._fail("strategy", f"one of {masked} with secagg=true (a buffer to mask)")
                self.ring_codec()
            check_user_dp(self)
        except SettingsError:
            raise
        except ValueError as err:  # the device model's and the partitioners' own parse errors
            raise SettingsError(str(err)) from err

    def device_model(self) -> DeviceModel:
        """The emulated device model these knobs describe (validated at start-up)."""
        return DeviceModel.from_knobs(
            tier_speed_ratios=self.speed_ratios(),
            emulated_step_seconds=self.emulated_step_seconds,
            task_jitter=self.task_jitter,
            availability=self.availability,
            link_mbps=self.link_mbps,
            link_latency_seconds=self.link_latency_seconds,
            seed=self.seed,
        )

    def _check_resume(self) -> None:
        """A resumed run writes into the folder it resumes; Flower's FedAvg has no resume."""
        if not self.resume_from:
            return
        if spec_of(self.strategy).run_by_flower:
            self._fail("strategy", f"an asynchronous strategy, not {self.strategy!r}, with resume-from")
        if self.run_dir and Path(self.run_dir).resolve() != self.resume_dir().resolve():
            self._fail("run_dir", f"empty or the folder resume-from names ({self.resume_dir()})")

    def resume_dir(self) -> Path:
        """The run folder ``resume-from`` names (it may name the checkpoint file in it)."""
        path = Path(self.resume_from)
        return path.parent if path.suffix == ".npz" else path

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunSettings:
        """Build settings from a run config; unknown keys are ignored (other apps' knobs)."""
        return options_from_run_config(cls, run_config)

    def federated_eval_on(self, server_holds_data: bool) -> bool:
        """Whether the run evaluates on the nodes: ``auto`` does exactly when the server holds no data."""
        return self.federated_eval == "on" or (self.federated_eval == "auto" and not server_holds_data)

    @property
    def flush_size(self) -> int:
        """How many updates fill one server step of this run's strategy (``buffer-size`` for
        fedbuff, ``concurrency`` for the sync barrier and Flower's FedAvg, 1 for fedasync)."""
        return flush_size(self.strategy, self.buffer_size, self.concurrency)

    @property
    def dp_k_min(self) -> int:
        """K_min of user-level DP, resolved once for both sides: ``user-dp-k-min``, or the flush
        size when it is 0. Clients size their noise shares with it (:meth:`share_std`) and the
        server's accountant charges each flush with it; the two must never differ."""
        return self.user_dp_k_min or self.flush_size

    def share_std(self) -> float:
        """The noise share σ·C/√K_min each client adds in distributed mode (0.0 otherwise)."""
        if not self.user_dp or self.user_dp_mode != "distributed":
            return 0.0
        return distributed_share_std(self.user_dp_noise_multiplier, self.user_dp_clip, self.dp_k_min)

    def ring_codec(self) -> RingCodec:
        """Fixed-point encoding both ends of secure aggregation share (headroom-checked)."""
        try:
            return RingCodec(
                scale_bits=self.secagg_scale_bits,
                clip=self.secagg_clip,
                max_weight=self.secagg_max_weight,
                weight_scale=self.secagg_weight_scale,
                max_summands=max(self.buffer_size, self.concurrency),
            )
        except (TypeError, ValueError) as err:
            raise SettingsError(f"secagg-* knobs: {err}") from err

    def speed_ratios(self) -> dict[str, float]:
        """Parse ``tier-speed-ratios`` ("high=1.0,mid=3.3,low=9.2") into a dict."""
        ratios: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in self.tier_speed_ratios.split(","))):
            tier, sep, value = item.partition("=")
            try:
                ratio = float(value)
            except ValueError:
                ratio = math.nan
            if not sep or tier not in DEVICE_TIERS or not 1.0 <= ratio < math.inf:
                raise SettingsError(
                    f"tier-speed-ratios: {item!r} is not TIER=RATIO with TIER in {DEVICE_TIERS} and RATIO >= 1"
                )
            ratios[tier] = ratio
        missing = set(DEVICE_TIERS) - set(ratios)
        if missing:
            raise SettingsError(f"tier-speed-ratios: no ratio for tier(s) {sorted(missing)}")
        return ratios

    def as_dict(self) -> dict[str, object]:
        """The settings as run-config keys, for the run folder."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}
