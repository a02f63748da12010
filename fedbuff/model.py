"""The model both apps share, and the numpy <-> torch bridge. Imports torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_FEATURES = 64  # 8x8 digits
NUM_CLASSES = 10


def build_model(hidden_units: int, seed: int) -> nn.Module:
    """A small MLP for 8x8 digits, initialised deterministically from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(NUM_FEATURES, hidden_units),
        nn.ReLU(),
        nn.Linear(hidden_units, NUM_CLASSES),
    )
    torch.random.set_rng_state(generator_state)
    return model


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Model parameters as float32 numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load numpy arrays (``state_dict`` order) into ``model``."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
    state = {k: torch.from_numpy(np.asarray(w, dtype=np.float32)) for k, w in zip(keys, weights)}
    model.load_state_dict(state, strict=True)


def pick_device() -> torch.device:
    """The fastest device this process can see: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def train(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> tuple[float, int]:
    """Plain SGD on one partition; ``steps > 0`` caps the number of batches.

    The update is written out rather than using ``torch.optim.SGD``: constructing a
    torch optimizer costs ~0.9 s of imports, paid by every ClientApp process.

    Returns the mean training loss and the number of batches taken.
    """
    model.to(device).train()
    x = torch.from_numpy(features).to(device)
    y = torch.from_numpy(labels).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    total_loss, taken = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            loss = loss_fn(model(x[batch]), y[batch])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for param, grad in zip(params, grads):
                    param.sub_(grad, alpha=lr)
            total_loss += float(loss.item())
            taken += 1
            if steps and taken >= steps:
                return total_loss / taken, taken
    return total_loss / max(taken, 1), taken


@torch.no_grad()
def evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy on a held-out set (CPU)."""
    model.cpu().eval()
    logits = model(torch.from_numpy(features))
    target = torch.from_numpy(labels)
    loss = nn.functional.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return float(loss), float(accuracy)
