"""Sample-level DP-SGD on the client's partition with Opacus (DESIGN.md §6).

Replaces :func:`fedbuff.model.train` when ``dp-sgd`` is on: per-example gradients are clipped
to ``dp-max-grad-norm`` and Gaussian noise ``N(0, (σ·C)²)`` is added to their sum at every
step; batches are Poisson-sampled (each example in each step with probability
``batch_size / n``), which is what Opacus' RDP accountant assumes. The guarantee is about one
*example* of this client's partition, and ε is this client's own.

Every message runs in a fresh ClientApp process, so the accountant's history travels in
``context.state`` between messages (:func:`history_to_record` / :func:`history_from_record`:
three flat lists, fit for a ``ConfigRecord``); ε reported after a message covers every message
this client has trained so far (the partition is the same for the whole run, so the steps
compose).

Importing this module is cheap (numpy, stdlib); torch and Opacus are imported by the
functions that need them, so the ~1 s Opacus import (PrivacyEngine pulls in scipy.stats and
torch.distributed) and the torch.optim import are paid only by processes that run DP-SGD.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

History = list[tuple[float, float, int]]

# ConfigRecord keys of the accountant history kept in context.state
HISTORY_NOISE = "noise-multiplier"
HISTORY_RATE = "sample-rate"
HISTORY_STEPS = "steps"


class DPConfigError(ValueError):
    """A DP-SGD knob is out of range; the message starts with the run-config key."""


class IncompatibleModelError(ValueError):
    """The model has layers Opacus cannot compute per-example gradients for."""


@dataclass(frozen=True)
class DPSGDOptions:
    """DP-SGD knobs; field ``a_b`` is the run-config key ``a-b``.

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
            raise DPConfigError(f"{key} must be {requirement}, got {value!r}")

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
class DPSGDResult:
    """What one message of DP-SGD training produced.

    ``epsilon`` is this client's cumulative ε at ``dp-delta`` over every message so far;
    ``history`` is the accountant state to put back into ``context.state`` for the next one.
    """

    loss: float
    steps: int
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    history: dict[str, list]


# -- accountant history <-> context.state ----------------------------------------------------


def history_to_record(history: Sequence[Sequence[float]]) -> dict[str, list]:
    """Opacus' ``[(σ, q, steps), ...]`` as three flat lists (a ``ConfigRecord``'s values)."""
    return {
        HISTORY_NOISE: [float(s) for s, _, _ in history],
        HISTORY_RATE: [float(q) for _, q, _ in history],
        HISTORY_STEPS: [int(n) for _, _, n in history],
    }


def history_from_record(record: Mapping[str, Any] | None) -> History:
    """Inverse of :func:`history_to_record`; ``None`` or an empty record is an empty history."""
    if not record:
        return []
    sigmas = [float(s) for s in record.get(HISTORY_NOISE, [])]
    rates = [float(q) for q in record.get(HISTORY_RATE, [])]
    counts = [int(n) for n in record.get(HISTORY_STEPS, [])]
    if not len(sigmas) == len(rates) == len(counts):
        raise ValueError("DP-SGD accountant history: lists differ in length")
    for s, q, n in zip(sigmas, rates, counts):
        if not (s >= 0 and 0 < q <= 1 and n >= 0):
            raise ValueError(f"DP-SGD accountant history: entry ({s}, {q}, {n}) out of range")
    return list(zip(sigmas, rates, counts))


def epsilon_of(record: Mapping[str, Any] | None, delta: float) -> float:
    """ε of a stored history at ``delta`` (0.0 for none), without training."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = history_from_record(record)
    return float(accountant.get_epsilon(delta=delta))


# -- model compatibility ---------------------------------------------------------------------


def check_compatible(model: nn.Module) -> None:
    """Raise :class:`IncompatibleModelError` naming every layer Opacus refuses.

    Built from ``opacus.validators.ModuleValidator.validate``; the model is validated in
    training mode (DP-SGD trains it).
    """
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()
    try:
        errors = ModuleValidator.validate(model, strict=False)
        if not errors:
            return
        offending = [
            f"layer '{name or '<root>'}' ({type(module).__name__})"
            for name, module in model.named_modules()
            if type(module) in ModuleValidator.VALIDATORS and ModuleValidator.VALIDATORS[type(module)](module)
        ]
    finally:
        model.train(was_training)
    details = "; ".join(dict.fromkeys(str(e) for e in errors))
    raise IncompatibleModelError(
        "DP-SGD (dp-sgd = true) cannot train this model: Opacus needs per-example gradients "
        f"and refuses {', '.join(offending) or 'the model'}: {details}. Replace the layer(s) "
        "before training, e.g. `model = opacus.validators.ModuleValidator.fix(model)`, which "
        "swaps BatchNorm for GroupNorm (per-example statistics do not mix examples), or build "
        "the model with nn.GroupNorm / nn.LayerNorm instead."
    )


# -- training --------------------------------------------------------------------------------


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def train_dp_sgd(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    options: DPSGDOptions,
    epochs: int,
    steps: int,
    batch_size: int,
    lr: float,
    device: torch.device | str = "cpu",
    history: Mapping[str, Any] | None = None,
    sampling_seed: int | None = None,
    noise_seed: int | None = None,
) -> DPSGDResult:
    """DP-SGD (Opacus ``PrivacyEngine``, RDP accountant) on one partition; trains ``model`` in place.

    Mirrors :func:`fedbuff.model.train`: ``epochs`` passes of ``n / batch_size`` Poisson-sampled
    batches each, ``steps > 0`` caps the number of batches; plain SGD with ``lr``. ``history``
    is the accountant state returned by the previous message (``None`` for the first).

    ``sampling_seed`` and ``noise_seed`` exist for tests. Leave them ``None`` in a deployment:
    they are then drawn from ``os.urandom``. A seed the server can guess (the run seed, the
    model version) would let it recompute the noise and the batches, which voids the guarantee;
    torch's default generator is no better (every fresh process starts from the same seed).
    """
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.validators.errors import UnsupportedModuleError
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    if epochs < 1 or steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError("epochs >= 1, steps >= 0, batch_size >= 1 and lr > 0 are required")
    if len(labels) == 0:
        raise ValueError("DP-SGD needs a non-empty partition")
    device = torch.device(device)
    restored = history_from_record(history)
    check_compatible(model)
    model.to(device).train()

    dataset = TensorDataset(torch.from_numpy(np.asarray(features, dtype=np.float32)),
                            torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    sampling = torch.Generator().manual_seed(_os_seed() if sampling_seed is None else sampling_seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), generator=sampling)
    noise = torch.Generator(device=device).manual_seed(_os_seed() if noise_seed is None else noise_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    sample_rate = 1.0 / len(loader)
    if options.dp_target_epsilon > 0:
        planned = min(steps, epochs * len(loader)) if steps else epochs * len(loader)
        with warnings.catch_warnings():  # the search probes huge σ, whose best order is the largest
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(target_epsilon=options.dp_target_epsilon, target_delta=options.dp_delta,
                                         sample_rate=sample_rate, steps=planned, accountant="rdp")
    else:
        sigma = options.dp_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        try:
            dp_model, dp_optimizer, dp_loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
                max_grad_norm=options.dp_max_grad_norm, poisson_sampling=True, noise_generator=noise,
            )
        except (UnsupportedModuleError, NotImplementedError) as err:
            raise IncompatibleModelError(f"DP-SGD cannot train this model: Opacus says: {err}") from err
    engine.accountant.history = list(restored)  # continue this client's composition

    loss_fn = nn.CrossEntropyLoss()
    total_loss, counted, taken = 0.0, 0, 0
    try:
        with warnings.catch_warnings():
            # the first layer's input needs no gradient; Opacus' hooks work regardless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(epochs):
                for x, y in dp_loader:
                    x, y = x.to(device), y.to(device)
                    dp_optimizer.zero_grad(set_to_none=True)
                    # An empty Poisson batch is still a step (pure noise, counted by the
                    # accountant, as the analysis assumes); its loss is NaN and not averaged.
                    loss = loss_fn(dp_model(x), y)
                    loss.backward()
                    dp_optimizer.step()
                    if len(y):
                        total_loss += float(loss.item())
                        counted += 1
                    taken += 1
                    if steps and taken >= steps:
                        break
                if steps and taken >= steps:
                    break
    finally:
        if hasattr(dp_model, "remove_hooks"):  # GradSampleModule: detach Opacus' hooks
            dp_model.remove_hooks()
        for param in model.parameters():
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(param, attr):
                    delattr(param, attr)
            param.grad = None

    epsilon = float(engine.accountant.get_epsilon(delta=options.dp_delta))
    return DPSGDResult(
        loss=total_loss / counted if counted else math.nan,
        steps=taken,
        epsilon=epsilon,
        noise_multiplier=float(sigma),
        sample_rate=sample_rate,
        history=history_to_record(engine.accountant.history),
    )
