"""The task API: what a task gives the engine, and nothing more (docs/tasks.md).

A task is the user's: the model, where a node's data come from, the loss and the metrics.
Everything else is the engine's: the protocol and deltas, the loop and strategies, the warm
trainer, device tiers, DP-SGD, secure aggregation, validation, metrics, checkpoints and the
virtual clock. The run config's ``task`` names one: a built-in (``digits``, ``fashion-mnist``,
``shakespeare``) or ``module:object`` in the submitted app, where ``object`` is a :class:`Task`
subclass (or any callable) that takes the run config and returns a :class:`Task`.

This module imports numpy only; torch is imported where a default method needs it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

BUILTIN_TASKS = ("digits", "fashion-mnist", "shakespeare")
TASK_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Scalar = bool | int | float | str | bytes
TierWeights = Callable[[Mapping[int, str], int], Mapping[str, np.ndarray]]


class TaskError(RuntimeError):
    """A task cannot be loaded or gave the engine something it cannot use; one line, naming the task."""


class IncompatibleModelError(TaskError, ValueError):
    """DP-SGD cannot train the task's model: Opacus refuses one of its layers (the message names it)."""


@dataclass(frozen=True)
class Examples:
    """Inputs and targets in memory, one example per entry of the first dimension (numpy arrays
    or torch tensors of any shape: 64 features, a 1×28×28 image, 80 character ids; float64
    values are trained as float32)."""

    inputs: Any
    targets: Any

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise TaskError(f"examples: {len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, rows: np.ndarray) -> Examples:
        """The examples at ``rows`` (integer indices)."""
        return Examples(self.inputs[rows], self.targets[rows])


@dataclass(frozen=True)
class NodeData:
    """One node's data: what it trains on, and its held-out split (federated evaluation)."""

    train: Examples
    test: Examples | None = None


@dataclass(frozen=True)
class Node:
    """What a task learns about the node it runs on: its node config (``--node-config`` of the
    SuperNode, e.g. ``data-path``), and the partition id / count and tier the operator gave it."""

    config: Mapping[str, Scalar]
    partition_id: int = 0
    num_partitions: int = 1
    device_tier: str = "real"

    def path(self, key: str = "data-path") -> Path:
        """The node config value ``key`` as a path; a :class:`TaskError` when it is missing or absent on disk."""
        value = self.config.get(key)
        if not isinstance(value, str) or not value:
            raise TaskError(f"node config has no {key} (start the SuperNode with --node-config '{key}=\"...\"')")
        path = Path(value).expanduser()
        if not path.exists():
            raise TaskError(f"{key} {path} does not exist on this node")
        return path


@dataclass(frozen=True)
class Metric:
    """A metric the task evaluates, and which way is better."""

    name: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class CentralData:
    """Data the server may hold (a research run on a bundled data set; never in a deployment).

    - ``test``: held-out examples the server evaluates every model version on;
    - ``proxy``: public examples for a server-side warm-up (``warmup-steps``);
    - ``max_examples``: the most training examples one node can hold (caps what a reply may claim);
    - ``tier_weights``: given ``{partition id: tier}`` and the partition count, a weight per
      ``test`` row for each tier: the per-tier fairness report.
    """

    test: Examples
    proxy: Examples | None = None
    max_examples: int | None = None
    tier_weights: TierWeights | None = None


class Task:
    """Base class of a task. Override :meth:`model` and :meth:`load_data`; the rest has defaults
    for classification (cross-entropy, accuracy). A subclass is built with the run config
    (``self.config``), where its own knobs live.

    - :meth:`model`: a fresh ``torch.nn.Module``; the engine seeds torch around the call.
    - :meth:`load_data`: a node's training data and held-out split, from its node config.
    - :meth:`central_data`: what the server may hold, or ``None`` (the default: a deployment).
    - :meth:`loss`: the training loss of a batch (mean); :meth:`example_metrics`: each
      evaluated example's metric values, averaged by the engine (example-weighted), named as
      in :attr:`metrics`.
    - :meth:`node_tiers`: only for a research task that ties device tiers to its data split.
    - :meth:`train_step`: one optimisation step on a batch, the hook for gradient clipping, a
      custom loss or a schedule. The engine owns the optimizer and the batches (under DP-SGD
      they are Opacus' clipped-and-noised optimizer and Poisson batches).
    """

    metrics: tuple[Metric, ...] = (Metric("accuracy", higher_is_better=True), Metric("loss", higher_is_better=False))

    def __init__(self, config: Mapping[str, Scalar] | None = None) -> None:
        self.config: dict[str, Scalar] = dict(config or {})

    def model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define model()")

    def load_data(self, node: Node) -> NodeData:
        raise NotImplementedError(f"{type(self).__name__} must define load_data(node)")

    def central_data(self) -> CentralData | None:
        return None

    def node_tiers(self, num_partitions: int) -> list[str] | None:
        """Each partition's device tier where the task ties tiers to its data (a research split);
        ``None`` (the default): the engine assigns tiers by its ``tier-mix`` quotas."""
        return None

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional

        return functional.cross_entropy(outputs, targets)

    def example_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch.nn import functional

        return {
            "accuracy": (outputs.argmax(dim=1) == targets).float(),
            "loss": functional.cross_entropy(outputs, targets, reduction="none"),
        }

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, optimizer: Any) -> torch.Tensor:
        optimizer.zero_grad()
        loss = self.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    @property
    def name(self) -> str:
        """How messages and errors name this task."""
        return f"task {type(self).__module__}:{type(self).__qualname__}"


def is_builtin(reference: str) -> bool:
    return reference in BUILTIN_TASKS


def check_reference(reference: str) -> str | None:
    """Why ``reference`` cannot name a task (``None`` when it can)."""
    if is_builtin(reference) or TASK_REFERENCE.match(reference):
        return None
    return f'a built-in task {BUILTIN_TASKS} or module:object (e.g. "task:Task")'


def load_task(reference: str, run_config: Mapping[str, Scalar]) -> Task:
    """The task ``reference`` names, built with the run config. Every failure is one
    :class:`TaskError` line that names the task: an import error, a missing object, an object
    that builds no :class:`Task`, or an error in its constructor."""
    if is_builtin(reference):
        from fedbuff.builtin_tasks import BundledTask

        return BundledTask(reference, run_config)
    if (why := check_reference(reference)) is not None:
        raise TaskError(f"task {reference!r} must be {why}")
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: any error in it is theirs to see, in one line
        raise TaskError(f"task {reference}: cannot import {module_name}: {type(err).__name__}: {err}") from err
    target: Any = module
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise TaskError(f"task {reference}: module {module_name} has no {attribute}") from None
    if isinstance(target, Task):
        return target
    if not callable(target):
        raise TaskError(f"task {reference}: {attribute} is neither a Task nor callable")
    try:
        task = target(dict(run_config))
    except Exception as err:
        raise TaskError(f"task {reference}: {attribute}(run_config) failed: {type(err).__name__}: {err}") from err
    if not isinstance(task, Task):
        raise TaskError(f"task {reference}: {attribute}(run_config) returned {type(task).__name__}, not a fedbuff Task")
    return task
