"""The models both apps share, and the numpy <-> torch bridge. Imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from fedbuff.datasets import FederatedData

NUM_FEATURES = 64  # 8x8 digits
NUM_CLASSES = 10
EMBEDDING_DIM = 8  # LEAF's Shakespeare model embeds each character in 8 dimensions


@dataclass(frozen=True)
class ModelSpec:
    """What the model must fit: input width, number of classes, and whether the inputs
    are character ids (a recurrent model) rather than features (an MLP)."""

    num_features: int = NUM_FEATURES
    num_classes: int = NUM_CLASSES
    recurrent: bool = False

    @classmethod
    def of(cls, data: FederatedData) -> ModelSpec:
        """The model a dataset needs: character ids (a vocabulary) take the recurrent one."""
        return cls(int(np.prod(data.input_shape)), data.num_classes, recurrent=data.vocab is not None)


class CharRNN(nn.Module):
    """Next-character model for Shakespeare: embedding, one LSTM layer, a linear read-out of
    the last step (LEAF's model, smaller: one layer of ``hidden_units``)."""

    def __init__(self, vocab_size: int, hidden_units: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, EMBEDDING_DIM)
        self.lstm = nn.LSTM(EMBEDDING_DIM, hidden_units, batch_first=True)
        self.head = nn.Linear(hidden_units, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embed(ids))
        return self.head(output[:, -1])


def build_model(hidden_units: int, seed: int, spec: ModelSpec = ModelSpec()) -> nn.Module:
    """A small MLP (or, for character ids, :class:`CharRNN`), initialised from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    if spec.recurrent:
        model: nn.Module = CharRNN(spec.num_classes, hidden_units)
    else:
        model = nn.Sequential(
            nn.Linear(spec.num_features, hidden_units),
            nn.ReLU(),
            nn.Linear(hidden_units, spec.num_classes),
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


EVAL_BATCH = 4096  # rows per forward pass in evaluation (bounds memory for the recurrent model)


@torch.no_grad()
def evaluate_rows(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy on a held-out set, and whether each row was predicted right (CPU)."""
    model.cpu().eval()
    total_loss, correct = 0.0, []
    for start in range(0, len(labels), EVAL_BATCH):
        logits = model(torch.from_numpy(features[start : start + EVAL_BATCH]))
        target = torch.from_numpy(labels[start : start + EVAL_BATCH])
        total_loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct.append((logits.argmax(dim=1) == target).numpy())
    return total_loss / max(len(labels), 1), np.concatenate(correct) if correct else np.zeros(0, bool)


def evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy on a held-out set (CPU)."""
    loss, correct = evaluate_rows(model, features, labels)
    return float(loss), float(correct.mean()) if len(correct) else 0.0
