"""The built-in tasks (``task = "digits"``, ``"fashion-mnist"``, ``"shakespeare"``), written
against the task API like any user's: an MLP (a small LSTM for Shakespeare's character ids) on
a data set this machine holds, split among the nodes by partition id and count and the seed.

They are research tasks: the server may hold a copy of the data (central evaluation, the
per-tier fairness report, a warm-up on proxy data), and the tiers can be tied to the labels
(``partitioner = "tier-correlated"``). Their knobs are :class:`BundledOptions`, not the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbuff import run_data
from fedbuff.datasets import FederatedData
from fedbuff.partitioners import DEFAULT_TIER_MIX, PARTITIONERS, label_histogram, parse_tier_mix
from fedbuff.settings import SettingsError, options_from_run_config
from fedbuff.task import BUILTIN_TASKS, CentralData, Examples, Node, NodeData, Scalar, Task

NATURAL_ID_DATASETS = ("shakespeare",)  # datasets whose rows carry a writer / speaking role
_HELD_OUT_STREAM = 0x4E1D
# features and classes of the image data sets (what ModelSpec.of would read off their files)
IMAGE_SPECS = {
    "digits": (64, 10),
    "fashion-mnist": (784, 10),
}  # the seeded order in which held-out rows are dealt to the nodes


@dataclass(frozen=True)
class BundledOptions:
    """The built-in tasks' knobs; field ``a_b`` is the run-config key ``a-b``.

    ``dataset`` is the task's name (the ``task`` knob); ``seed`` and ``tier_mix`` are the run's,
    read here because the split and the tier assignment depend on them.
    """

    dataset: str = "digits"
    hidden_units: int = 64
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 1.0
    classes_per_partition: int = 2
    tier_strength: float = 0.0
    test_fraction: float = 0.2
    seed: int = 42
    tier_mix: str = DEFAULT_TIER_MIX

    def __post_init__(self) -> None:
        def fail(key: str, requirement: str, value: object) -> None:
            raise SettingsError(f"{key} must be {requirement}, got {value!r}")

        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if self.dataset not in BUILTIN_TASKS:
            fail("task", f"one of {BUILTIN_TASKS}", self.dataset)
        if self.partitioner not in PARTITIONERS:
            fail("partitioner", f"one of {PARTITIONERS}", self.partitioner)
        if not (
            isinstance(self.hidden_units, int) and not isinstance(self.hidden_units, bool) and self.hidden_units >= 1
        ):
            fail("hidden-units", "an integer >= 1", self.hidden_units)
        if not (number(self.dirichlet_alpha) and self.dirichlet_alpha > 0):
            fail("dirichlet-alpha", "a number > 0", self.dirichlet_alpha)
        if not (isinstance(self.classes_per_partition, int) and self.classes_per_partition >= 1):
            fail("classes-per-partition", "an integer >= 1", self.classes_per_partition)
        if not (number(self.tier_strength) and self.tier_strength >= 0):
            fail("tier-strength", "a number >= 0", self.tier_strength)
        if not (number(self.test_fraction) and 0 < self.test_fraction < 1):
            fail("test-fraction", "in (0, 1)", self.test_fraction)
        try:
            parse_tier_mix(self.tier_mix)
        except ValueError as err:
            raise SettingsError(str(err)) from err
        if self.partitioner == "natural" and self.dataset not in NATURAL_ID_DATASETS:
            fail(
                "partitioner",
                f"not 'natural' with task {self.dataset!r} (natural ids exist for {NATURAL_ID_DATASETS})",
                self.partitioner,
            )

    @classmethod
    def from_run_config(cls, name: str, run_config: Mapping[str, Scalar]) -> BundledOptions:
        return options_from_run_config(cls, {**run_config, "dataset": name})


class BundledTask(Task):
    """A built-in task: its data set is loaded (and split) once per process, on first use."""

    def __init__(self, name: str, run_config: Mapping[str, Scalar] | None = None) -> None:
        super().__init__(run_config)
        self.options = BundledOptions.from_run_config(name, self.config)
        self._data: FederatedData | None = None
        self._rows: dict[int, list[np.ndarray]] = {}

    @property
    def name(self) -> str:
        return f"task {self.options.dataset}"

    @property
    def data(self) -> FederatedData:
        """The whole data set (loaded on first use)."""
        if self._data is None:
            self._data = run_data.load(self.options)
        return self._data

    def model(self):  # -> nn.Module (torch is imported only here)
        """The MLP (the LSTM for Shakespeare). The image data sets' shapes are fixed, so building
        it never loads them (Flower's per-message process builds a model for every message);
        Shakespeare's vocabulary comes from its data."""
        from fedbuff.model import ModelSpec, make_model

        shape = IMAGE_SPECS.get(self.options.dataset)
        spec = ModelSpec(*shape) if shape else ModelSpec.of(self.data)
        return make_model(self.options.hidden_units, spec)

    def load_data(self, node: Node) -> NodeData:
        rows = self._client_rows(node.partition_id, node.num_partitions)
        train = self.data.train
        return NodeData(Examples(train.features[rows], train.labels[rows]), self._held_out(rows, node))

    def central_data(self) -> CentralData:
        data = self.data
        return CentralData(
            test=Examples(data.test.features, data.test.labels),
            proxy=Examples(data.train.features, data.train.labels),
            max_examples=len(data.train),
            tier_weights=self.tier_weights,
        )

    def node_tiers(self, num_partitions: int) -> list[str] | None:
        """Tiers tied to the labels with ``partitioner = "tier-correlated"``; else the engine's quotas."""
        if self.options.partitioner != "tier-correlated":
            return None
        return run_data.client_tiers(self.options, num_partitions, self._data)

    def tier_weights(self, tier_of: Mapping[int, str], num_partitions: int) -> dict[str, np.ndarray]:
        """Each tier's weight per held-out row (docs/heterogeneity.md): with ``natural`` ids the
        held-out rows of the ids its nodes hold; otherwise the held-out rows weighted so that
        their labels follow the tier's pooled training labels (per-class accuracy averaged with
        the tier's class shares: the expected accuracy on fresh data drawn like the tier's)."""
        data, test = self.data, self.data.test
        all_rows = self._all_rows(num_partitions)
        out = {}
        for tier in sorted(set(tier_of.values())):
            rows = np.concatenate([all_rows[p] for p, t in tier_of.items() if t == tier and 0 <= p < num_partitions])
            if self.options.partitioner == "natural":
                assert data.train_ids is not None and data.test_ids is not None
                weight = np.isin(data.test_ids, np.unique(data.train_ids[rows])).astype(float)
            else:
                share = label_histogram(data.train.labels[rows], data.num_classes)
                held_out = np.bincount(test.labels, minlength=data.num_classes).astype(float)
                per_class = np.divide(share, held_out, out=np.zeros_like(share), where=held_out > 0)
                weight = per_class[test.labels]
            if weight.sum() > 0:
                out[tier] = weight
        return out

    def _client_rows(self, partition_id: int, num_partitions: int) -> np.ndarray:
        """One node's training rows; every node's are kept once split (a process that serves
        many virtual nodes splits the data once), except natural ids, whose one group is cheap."""
        if self.options.partitioner == "natural":
            return run_data.client_rows(self.options, self.data, partition_id, num_partitions)
        return self._all_rows(num_partitions)[partition_id]

    def _all_rows(self, num_partitions: int) -> list[np.ndarray]:
        if num_partitions not in self._rows:
            self._rows[num_partitions] = run_data.all_client_rows(self.options, self.data, num_partitions)
        return self._rows[num_partitions]

    def _held_out(self, rows: np.ndarray, node: Node) -> Examples:
        """The node's own held-out rows (federated evaluation): with natural ids, the held-out
        rows of the ids it trains on; otherwise the held-out split dealt to the nodes in a seeded
        order, one row each in turn (together the nodes hold the server's held-out split once)."""
        data, test = self.data, self.data.test
        if self.options.partitioner == "natural" and data.train_ids is not None and data.test_ids is not None:
            mine = np.flatnonzero(np.isin(data.test_ids, np.unique(data.train_ids[rows])))
        else:
            order = np.random.default_rng([self.options.seed, _HELD_OUT_STREAM]).permutation(len(test))
            mine = np.sort(order[node.partition_id :: max(node.num_partitions, 1)])
        return Examples(test.features[mine], test.labels[mine])
