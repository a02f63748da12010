"""Sample-level DP-SGD on the client's partition with Opacus (docs/privacy.md, section 2).

Replaces :func:`fedbuff.training.train` when ``dp-sgd`` is on: per-example gradients are clipped
to ``dp-max-grad-norm`` and Gaussian noise ``N(0, (σ·C)²)`` is added to their sum at every
step; batches are Poisson-sampled, each example in each step with probability
``q = 1 / ⌈n / batch_size⌉`` (one over the number of batches of the partition: Opacus'
``DPDataLoader`` takes ``1 / len(data_loader)``, and the same q calibrates σ and is reported),
which is what Opacus' RDP accountant assumes; q is ``batch_size / n`` only when ``batch_size``
divides ``n``. The guarantee is about one *example* of this client's partition, and ε is this
client's own.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedbuff.task import Examples, IncompatibleModelError, Task

if TYPE_CHECKING:
    import torch
    from flwr.app import ConfigRecordValues
    from torch import nn

    from fedbuff.settings import DPSGDOptions

__all__ = ["DPSGDResult", "IncompatibleModelError", "epsilon_of", "train_dp_sgd"]

History = list[tuple[float, float, int]]

# ConfigRecord keys of the accountant history kept in context.state
HISTORY_NOISE = "noise-multiplier"
HISTORY_RATE = "sample-rate"
HISTORY_STEPS = "steps"


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
    history: dict[str, ConfigRecordValues]


# -- accountant history <-> context.state ----------------------------------------------------


def history_to_record(history: Sequence[Sequence[float]]) -> dict[str, ConfigRecordValues]:
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


# -- training --------------------------------------------------------------------------------


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def train_dp_sgd(
    model: nn.Module,
    examples: Examples,
    *,
    task: Task | None = None,
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

    Mirrors :func:`fedbuff.training.train`: ``epochs`` passes of ``⌈n / batch_size⌉`` Poisson-sampled
    batches each (sample rate ``1 / ⌈n / batch_size⌉``), ``steps > 0`` caps the number of
    batches; plain SGD with ``lr``,
    each batch through ``task``'s training step (default: a classification task's).
    ``history`` is the accountant state returned by the previous
    message (``None`` for the first).

    ``sampling_seed`` and ``noise_seed`` exist for tests. Leave them ``None`` in a deployment:
    they are then drawn from ``os.urandom``. A seed the server can guess (the run seed, the
    model version) would let it recompute the noise and the batches, which voids the guarantee;
    torch's default generator is no better (every fresh process starts from the same seed).
    """
    import torch
    from opacus import PrivacyEngine
    from opacus.validators.errors import UnsupportedModuleError
    from torch.utils.data import DataLoader, TensorDataset

    if epochs < 1 or steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError("epochs >= 1, steps >= 0, batch_size >= 1 and lr > 0 are required")
    if len(examples) == 0:
        raise ValueError("DP-SGD needs a non-empty partition")
    from fedbuff.training import as_tensor, check_dp_compatible

    device = torch.device(device)
    restored = history_from_record(history)
    check_dp_compatible(model)
    model.to(device).train()
    dataset = TensorDataset(as_tensor(examples.inputs), as_tensor(examples.targets))
    sampling = torch.Generator().manual_seed(_os_seed() if sampling_seed is None else sampling_seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), generator=sampling)
    noise = torch.Generator(device=device).manual_seed(_os_seed() if noise_seed is None else noise_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    sample_rate = 1.0 / len(loader)
    planned = min(steps, epochs * len(loader)) if steps else epochs * len(loader)
    sigma = _noise_multiplier(options, sample_rate, planned)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        try:
            dp_model, dp_optimizer, dp_loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=options.dp_max_grad_norm,
                poisson_sampling=True,
                noise_generator=noise,
            )
        except (UnsupportedModuleError, NotImplementedError) as err:
            raise IncompatibleModelError(f"DP-SGD cannot train this model: Opacus says: {err}") from err
    engine.accountant.history = list(restored)  # continue this client's composition

    try:
        total_loss, counted, taken = _private_steps(
            task or Task(), dp_model, dp_optimizer, dp_loader, device, epochs, steps
        )
    finally:
        _detach_opacus(model, dp_model)

    epsilon = float(engine.accountant.get_epsilon(delta=options.dp_delta))
    return DPSGDResult(
        loss=total_loss / counted if counted else math.nan,
        steps=taken,
        epsilon=epsilon,
        noise_multiplier=float(sigma),
        sample_rate=sample_rate,
        history=history_to_record(engine.accountant.history),
    )


def _noise_multiplier(options: DPSGDOptions, sample_rate: float, planned_steps: int) -> float:
    """σ: Opacus' calibration to ``dp-target-epsilon`` over one message's steps, else the knob."""
    if options.dp_target_epsilon <= 0:
        return options.dp_noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the search probes huge σ, whose best order is the largest
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=options.dp_target_epsilon,
                target_delta=options.dp_delta,
                sample_rate=sample_rate,
                steps=planned_steps,
                accountant="rdp",
            )
        )


def _private_steps(
    task: Task, dp_model: nn.Module, dp_optimizer: Any, dp_loader: Any, device: torch.device, epochs: int, steps: int
) -> tuple[float, int, int]:
    """Run the DP-SGD steps with the task's step: (summed loss, batches it was summed over, steps taken)."""
    total_loss, counted, taken = 0.0, 0, 0
    with warnings.catch_warnings():
        # the first layer's input needs no gradient; Opacus' hooks work regardless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for x, y in dp_loader:
                x, y = x.to(device), y.to(device)
                # An empty Poisson batch is still a step (pure noise, counted by the
                # accountant, as the analysis assumes); its loss is NaN and not averaged.
                loss = task.train_step(dp_model, x, y, dp_optimizer)
                if len(y):
                    total_loss += float(loss.item())
                    counted += 1
                taken += 1
                if steps and taken >= steps:
                    return total_loss, counted, taken
    return total_loss, counted, taken


def _detach_opacus(model: nn.Module, dp_model: Any) -> None:  # dp_model: Opacus' GradSampleModule (untyped)
    """Leave ``model`` as plain torch: Opacus' hooks removed, per-sample gradients dropped."""
    if hasattr(dp_model, "remove_hooks"):  # GradSampleModule
        dp_model.remove_hooks()
    for param in model.parameters():
        for attr in ("grad_sample", "summed_grad"):
            if hasattr(param, attr):
                delattr(param, attr)
        param.grad = None
