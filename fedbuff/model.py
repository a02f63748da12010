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


def make_model(hidden_units: int, spec: ModelSpec = ModelSpec()) -> nn.Module:
    """A small MLP (or, for character ids, :class:`CharRNN`), initialised from torch's generator."""
    if spec.recurrent:
        return CharRNN(spec.num_classes, hidden_units)
    return nn.Sequential(
        nn.Linear(spec.num_features, hidden_units),
        nn.ReLU(),
        nn.Linear(hidden_units, spec.num_classes),
    )


def build_model(hidden_units: int, seed: int, spec: ModelSpec = ModelSpec()) -> nn.Module:
    """:func:`make_model` initialised from ``seed`` (torch's global generator is restored after)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = make_model(hidden_units, spec)
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
    """Classification training on arrays, as a built-in task trains (:func:`fedbuff.training.train`).

    Returns the mean training loss and the number of batches taken.
    """
    from fedbuff.task import Examples, Task
    from fedbuff.training import train as train_task

    return train_task(
        Task(),
        model,
        Examples(features, labels),
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )


def evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy on a held-out set (CPU)."""
    from fedbuff.task import Examples, Task
    from fedbuff.training import evaluate as evaluate_task

    metrics = evaluate_task(Task(), model, Examples(features, labels))
    return metrics.get("loss", 0.0), metrics.get("accuracy", 0.0)
