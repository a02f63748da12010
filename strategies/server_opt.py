"""Server optimizers: apply a pseudo-gradient to the global model, with checkpointable state.

The pseudo-gradient ``g`` is the normalised buffer of ``dispatched - trained`` deltas,
so a descent step is ``w ← w − lr·g``. Reddi et al. (2021, "Adaptive Federated
Optimization", Algorithm 2) write the update with ``Δ = −g`` and ``x ← x + η·m/(√v + τ)``;
since ``m`` is linear in ``Δ`` and ``v`` only sees ``Δ²``, that is ``w ← w − η·m_g/(√v + τ)``
with ``m_g`` the same average taken over ``g``.

Our FedAdam / FedYogi / FedAdagrad are that Algorithm 2: no bias correction, ``v`` starting at
``τ²``, τ added to ``√v``. They are not ``torch.optim.Adam``, which FLSim's FedBuff uses (bias-
corrected moments, so larger first steps; ``eps`` added to the bias-corrected ``√v̂``; L2 weight
decay 1e-5 by default there): the same lr and betas give different trajectories.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from strategies.base import Arrays
from strategies.chunked import descend

if TYPE_CHECKING:
    from strategies.options import StrategyOptions

StateDict = dict[str, np.ndarray | float | int]


class ServerOptimizer(abc.ABC):
    """A stateful update rule ``w ← w − lr·direction(g)`` (numpy, float64 internally).

    The state is a step count and named per-layer moments (``"m.0"``, ``"v.0"``, ...),
    created at the first step; :meth:`state_dict` / :meth:`load_state_dict` round-trip it.
    """

    moments: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._steps = 0
        self._state: dict[str, Arrays] = {}

    @property
    def steps(self) -> int:
        """How many pseudo-gradients have been applied."""
        return self._steps

    def step(self, model: Arrays, pseudo_gradient: Arrays) -> Arrays:
        """Return the new model (float32) after one step on ``pseudo_gradient`` (only read).

        ``w − lr·direction`` is formed slice by slice straight into the float32 result, so
        the step allocates no float64 copy of the model and none of ``lr·direction``.
        """
        grad = [np.asarray(g, dtype=np.float64) for g in pseudo_gradient]
        if not self._state and self.moments:
            self._state = {name: self._initial_moment(name, grad) for name in self.moments}
        direction, lr = self._direction(grad)
        self._steps += 1
        return [descend(w, d, lr) for w, d in zip(model, direction, strict=True)]

    @abc.abstractmethod
    def reach(self, gradient_norm: float) -> float:
        """How far (L2) a pseudo-gradient component of norm ``gradient_norm`` can move the model,
        counting the later steps it rides along in the moments (0: the rule is scale-invariant)."""

    @abc.abstractmethod
    def _direction(self, grad: Arrays) -> tuple[Arrays, float]:
        """Update the moments in place; return ``(direction, lr)``: the model moves by ``−lr·direction``.

        ``grad`` and the returned arrays are only read afterwards, never written.
        """

    def _initial_moment(self, name: str, grad: Arrays) -> Arrays:
        return [np.zeros_like(g) for g in grad]

    def state_dict(self) -> StateDict:
        """A copy of the optimizer state (flat: ``steps`` and ``<moment>.<layer>`` arrays)."""
        state: StateDict = {"steps": self._steps}
        for name, arrays in self._state.items():
            state.update({f"{name}.{i}": a.copy() for i, a in enumerate(arrays)})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray | float | int]) -> None:
        """Restore a state written by :meth:`state_dict` of the same optimizer kind."""
        if "steps" not in state:
            raise ValueError("optimizer state has no 'steps'")
        layers: dict[str, dict[int, np.ndarray]] = {name: {} for name in self.moments}
        for key, value in state.items():
            if key == "steps":
                continue
            name, _, index = key.partition(".")
            if name not in layers or not index.isdigit():
                raise ValueError(f"unexpected optimizer state key {key!r}")
            layers[name][int(index)] = np.array(value, dtype=np.float64)
        n = len(next(iter(layers.values()), {}))
        if any(sorted(found) != list(range(n)) for found in layers.values()):
            raise ValueError(f"optimizer state needs moments {self.moments} for layers 0..n-1")
        self._steps = int(state["steps"])
        self._state = {name: [found[i] for i in range(n)] for name, found in layers.items() if n}


class ServerSGD(ServerOptimizer):
    """Heavy-ball SGD: ``v ← μ·v + g``; ``w ← w − lr·v`` (``lr = 1, μ = 0``: FedAvg's step)."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        super().__init__()
        self.lr = lr
        self.momentum = momentum
        self.moments = ("velocity",) if momentum else ()

    def reach(self, gradient_norm: float) -> float:
        """``lr·‖g‖ / (1 − μ)``: the velocity carries ``g`` into every later step, shrinking by μ."""
        return self.lr * gradient_norm / (1.0 - self.momentum)

    def _direction(self, grad: Arrays) -> tuple[Arrays, float]:
        if not self.momentum:
            return grad, self.lr
        for v, g in zip(self._state["velocity"], grad, strict=True):
            v *= self.momentum
            v += g
        return self._state["velocity"], self.lr


class AdaptiveServerOptimizer(ServerOptimizer):
    """Reddi et al. Algorithm 2: ``m ← β1·m + (1 − β1)·g``; ``w ← w − η·m / (√v + τ)``.

    Subclasses choose the second-moment update. ``v`` starts at ``τ²`` (the algorithm asks
    ``v₋₁ ≥ τ²``) and ``m`` at 0; there is no bias correction, as in the paper.
    """

    moments = ("m", "v")

    def __init__(self, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def _initial_moment(self, name: str, grad: Arrays) -> Arrays:
        return [np.full_like(g, self.tau**2 if name == "v" else 0.0) for g in grad]

    def reach(self, gradient_norm: float) -> float:
        """0: ``m / √v`` is normalised per coordinate, so a larger pseudo-gradient (noise
        included) does not make a longer step than ``max-step-norm`` already allows for."""
        return 0.0

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, grad_sq: np.ndarray) -> np.ndarray:
        """The new ``v`` from the previous ``v`` and ``g²``."""

    def _direction(self, grad: Arrays) -> tuple[Arrays, float]:
        m_all, v_all = self._state["m"], self._state["v"]
        for i, g in enumerate(grad):
            m_all[i] = self.beta1 * m_all[i] + (1.0 - self.beta1) * g
            v_all[i] = self._second_moment(v_all[i], g * g)
        return [self.lr * m / (np.sqrt(v) + self.tau) for m, v in zip(m_all, v_all, strict=True)], 1.0


class ServerAdam(AdaptiveServerOptimizer):
    """FedAdam: ``v ← β2·v + (1 − β2)·g²``."""

    def _second_moment(self, v: np.ndarray, grad_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * grad_sq


class ServerYogi(AdaptiveServerOptimizer):
    """FedYogi: ``v ← v − (1 − β2)·g²·sign(v − g²)`` (v grows at most additively)."""

    def _second_moment(self, v: np.ndarray, grad_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * grad_sq * np.sign(v - grad_sq)


class ServerAdagrad(AdaptiveServerOptimizer):
    """FedAdagrad: ``v ← v + g²`` (β2 unused)."""

    def _second_moment(self, v: np.ndarray, grad_sq: np.ndarray) -> np.ndarray:
        return v + grad_sq


SERVER_OPTIMIZERS: Mapping[str, Callable[[StrategyOptions], ServerOptimizer]] = MappingProxyType(
    {
        "sgd": lambda o: ServerSGD(lr=o.server_lr, momentum=o.server_momentum),
        "adam": lambda o: ServerAdam(o.server_lr, o.server_beta1, o.server_beta2, o.server_tau),
        "yogi": lambda o: ServerYogi(o.server_lr, o.server_beta1, o.server_beta2, o.server_tau),
        "adagrad": lambda o: ServerAdagrad(o.server_lr, o.server_beta1, o.server_beta2, o.server_tau),
    }
)


def server_optimizer(options: StrategyOptions) -> ServerOptimizer:
    """A fresh server optimizer as ``options`` select."""
    return SERVER_OPTIMIZERS[options.server_optimizer](options)
