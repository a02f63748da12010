"""The engine's side of a task: build its model seeded, train it with the engine's loop and
optimizer, evaluate it with the task's metrics, and check a model for DP-SGD. Imports torch.

The loop calls the task's :meth:`~fedbuff.task.Task.train_step` hook on every batch with the
engine's optimizer; the default step is the task's loss, a backward pass and a plain SGD step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbuff.task import Examples, IncompatibleModelError, Task, TaskError

EVAL_BATCH = 4096  # examples per forward pass in evaluation (bounds memory)


class PlainSGD:
    """``p -= lr * p.grad``, the engine's optimizer without DP-SGD.

    Written out rather than ``torch.optim.SGD``: importing torch's optimizers costs ~0.9 s,
    paid by every per-message ClientApp process.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for param in self.params:
            if param.grad is not None:
                param.sub_(param.grad, alpha=self.lr)


def build_model(task: Task, seed: int) -> nn.Module:
    """The task's model, initialised from ``seed`` (torch's global generator is restored after)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = task.model()
    except TaskError:
        raise
    except Exception as err:
        raise TaskError(f"{task.name}: model() failed: {type(err).__name__}: {err}") from err
    finally:
        torch.random.set_rng_state(state)
    if not isinstance(model, nn.Module):
        raise TaskError(f"{task.name}: model() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def as_tensor(values: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """A numpy array or tensor as a tensor on ``device`` (numpy memory is shared, not copied, on
    the CPU); float64 becomes float32, the dtype of torch's default parameters."""
    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device)


def batches(
    examples: Examples, batch_size: int, epochs: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``epochs`` shuffled passes over ``examples`` in batches of ``batch_size`` (seeded)."""
    x, y = as_tensor(examples.inputs, device), as_tensor(examples.targets, device)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            yield x[batch], y[batch]


def train(
    task: Task,
    model: nn.Module,
    examples: Examples,
    *,
    epochs: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> tuple[float, int]:
    """Local training: the task's step on shuffled batches with plain SGD; ``steps > 0`` caps
    the number of batches. Returns the mean training loss and the number of batches taken."""
    model.to(device).train()
    optimizer = PlainSGD(model.parameters(), lr)
    total_loss, taken = 0.0, 0
    for inputs, targets in batches(examples, batch_size, epochs, seed, device):
        loss = task.train_step(model, inputs, targets, optimizer)
        total_loss += float(loss.detach().item())
        taken += 1
        if steps and taken >= steps:
            break
    return total_loss / max(taken, 1), taken


@torch.no_grad()
def evaluate_rows(task: Task, model: nn.Module, examples: Examples) -> dict[str, np.ndarray]:
    """Each example's value of every metric the task declares (on the CPU, in eval mode)."""
    model.cpu().eval()
    names = [metric.name for metric in task.metrics]
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    x, y = as_tensor(examples.inputs), as_tensor(examples.targets)
    for start in range(0, len(y), EVAL_BATCH):
        targets = y[start : start + EVAL_BATCH]
        per_example = task.example_metrics(model(x[start : start + EVAL_BATCH]), targets)
        for name in names:
            if name not in per_example:
                raise TaskError(f"{task.name}: example_metrics() gave {sorted(per_example)}, not the declared {name!r}")
            value = per_example[name].detach().cpu().reshape(-1).double().numpy()
            if len(value) != len(targets):
                raise TaskError(f"{task.name}: metric {name!r} has {len(value)} values for {len(targets)} examples")
            values[name].append(value)
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in values.items()}


def mean_metrics(rows: dict[str, np.ndarray], weights: np.ndarray | None = None) -> dict[str, float]:
    """Example-weighted means of per-example metric values (``weights``: one per example)."""
    out = {}
    for name, values in rows.items():
        if not len(values):
            continue
        if weights is None:
            out[name] = float(values.mean())
        elif weights.sum() > 0:
            out[name] = float(weights @ values / weights.sum())
    return out


def evaluate(task: Task, model: nn.Module, examples: Examples) -> dict[str, float]:
    """The task's metrics of ``model`` on ``examples``, averaged over the examples."""
    return mean_metrics(evaluate_rows(task, model, examples))


def check_dp_compatible(model: nn.Module) -> None:
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
    details = "; ".join(dict.fromkeys(str(e).replace("\n", " ") for e in errors))
    raise IncompatibleModelError(
        "DP-SGD (dp-sgd = true) cannot train this model: Opacus needs per-example gradients "
        f"and refuses {', '.join(offending) or 'the model'}: {details}. Replace the layer(s) "
        "before training, e.g. `model = opacus.validators.ModuleValidator.fix(model)`, which "
        "swaps BatchNorm for GroupNorm (per-example statistics do not mix examples), or build "
        "the model with nn.GroupNorm / nn.LayerNorm instead."
    )
