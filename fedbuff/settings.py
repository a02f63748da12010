"""Typed run settings parsed from Flower's run config, validated once at start-up.

Every field maps to the ``[tool.flwr.app.config]`` key of the same name with ``_``
written as ``-``; pyproject.toml holds the defaults users see (a test keeps both equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields

from strategies import FedBuffConfig, ServerSGDConfig

DEVICE_TIERS = ("high", "mid", "low")


class SettingsError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class RunSettings:
    """All knobs of a run: loop, FedBuff, client training, data, tier emulation, outputs."""

    # asynchronous loop (server_app)
    concurrency: int = 6
    tasks_per_node: int = 1
    max_server_steps: int = 30
    target_accuracy: float = 0.0
    max_wall_seconds: float = 900.0
    eval_every: int = 5
    task_ttl_seconds: float = 120.0
    max_update_norm: float = 1000.0
    # FedBuff (strategies)
    buffer_size: int = 3
    staleness_weight: str = "polynomial"
    staleness_exponent: float = 0.5
    example_weight: str = "equal"
    max_staleness: int = 0
    server_lr: float = 1.0
    server_momentum: float = 0.0
    # local training (client_app)
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    client_lr: float = 0.1
    hidden_units: int = 64
    # data
    dirichlet_alpha: float = 1.0
    seed: int = 42
    test_fraction: float = 0.2
    # device-tier emulation
    tier_speed_ratios: str = "high=1.0,mid=3.3,low=9.2"
    emulated_step_seconds: float = 0.05
    # outputs
    run_dir: str = ""

    def __post_init__(self) -> None:
        _at_least(self, "concurrency", 1)
        _at_least(self, "tasks_per_node", 1)
        _at_least(self, "max_server_steps", 1)
        _between(self, "target_accuracy", 0.0, 1.0)
        _positive(self, "max_wall_seconds")
        _at_least(self, "eval_every", 1)
        _positive(self, "task_ttl_seconds")
        _at_least(self, "max_update_norm", 0.0)
        _at_least(self, "local_epochs", 1)
        _at_least(self, "local_steps", 0)
        _at_least(self, "batch_size", 1)
        _positive(self, "client_lr")
        _at_least(self, "hidden_units", 1)
        _positive(self, "dirichlet_alpha")
        if not 0.0 < self.test_fraction < 1.0:
            raise SettingsError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        _at_least(self, "emulated_step_seconds", 0.0)
        self.speed_ratios()  # validates tier-speed-ratios
        try:
            self.fedbuff_config()
        except ValueError as err:
            raise SettingsError(str(err)) from err

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunSettings:
        """Build settings from a run config; unknown keys are ignored, wrong types refused."""
        values: dict[str, object] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                continue
            values[field.name] = _coerce(key, run_config[key], type(field.default))
        return cls(**values)

    def fedbuff_config(self) -> FedBuffConfig:
        """The strategy's view of these settings."""
        return FedBuffConfig(
            buffer_size=self.buffer_size,
            staleness_weight=self.staleness_weight,
            staleness_exponent=self.staleness_exponent,
            example_weight=self.example_weight,
            max_staleness=self.max_staleness,
            server=ServerSGDConfig(lr=self.server_lr, momentum=self.server_momentum),
        )

    def speed_ratios(self) -> dict[str, float]:
        """Parse ``tier-speed-ratios`` ("high=1.0,mid=3.3,low=9.2") into a dict."""
        ratios: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in self.tier_speed_ratios.split(","))):
            tier, sep, value = item.partition("=")
            try:
                ratio = float(value)
            except ValueError:
                ratio = float("nan")
            if not sep or tier not in DEVICE_TIERS or not ratio >= 1.0:
                raise SettingsError(
                    f"tier-speed-ratios: {item!r} is not TIER=RATIO with TIER in {DEVICE_TIERS} "
                    "and RATIO >= 1"
                )
            ratios[tier] = ratio
        missing = set(DEVICE_TIERS) - set(ratios)
        if missing:
            raise SettingsError(f"tier-speed-ratios: no ratio for tier(s) {sorted(missing)}")
        return ratios

    def as_dict(self) -> dict[str, object]:
        """The settings as run-config keys, for the run folder."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}


def _coerce(key: str, value: object, kind: type) -> object:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _at_least(settings: RunSettings, name: str, low: float) -> None:
    value = getattr(settings, name)
    if not value >= low:
        raise SettingsError(f"{name.replace('_', '-')} must be >= {low}, got {value}")


def _positive(settings: RunSettings, name: str) -> None:
    value = getattr(settings, name)
    if not value > 0:
        raise SettingsError(f"{name.replace('_', '-')} must be > 0, got {value}")


def _between(settings: RunSettings, name: str, low: float, high: float) -> None:
    value = getattr(settings, name)
    if not low <= value <= high:
        raise SettingsError(f"{name.replace('_', '-')} must be in [{low}, {high}], got {value}")
