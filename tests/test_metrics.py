"""The Prometheus exporter: every series moves as the loop's events say, labels stay
bounded, non-finite values are never observed, and the HTTP endpoint serves its own
registry. ``synthetic_events`` is also the event source of the Prometheus and plot tests.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from server_app import metrics as m
from server_app.metrics import MetricsConfig, MetricsExporter
from server_app.reply_fields import DROPPED_FIELDS
from strategies.compass import CLOSE_REASONS
from strategies.guard import STEP_GUARD_REASONS

NAN, INF = float("nan"), float("inf")


# -- a realistic synthetic run ------------------------------------------------------------


def synthetic_events(
    seed: int = 0, nodes: int = 9, buffer_size: int = 3, max_staleness: int = 6
) -> Iterator[tuple[str, dict]]:
    """An endless, plausible event stream of an asynchronous FedBuff run (loop schema).

    Nodes of three tiers (round trips ~4 s / 12 s / 35 s with log-normal jitter, the low
    tier now and then past a 60 s deadline) each keep one task in flight; replies are
    mostly valid updates, sometimes invalid, TTL-expired, lost, crashed or from a node
    that left (retired, re-admitted 10 s later). Every third accepted update steps the
    model (its step norm shrinking as 2/√version), every second step is evaluated (overall and
    per known tier, and federated on three nodes, one of them failing every fourth time), and
    about 1% of update norms are NaN. Like a compute-aware run, a task to a
    node of known tier carries its local steps (high 8, mid 3, low 1), and every step closes an
    arrival group (every fourth by its timer, with one member late).
    """
    rng = random.Random(seed)
    tiers = {n: ("high", "mid", "low")[n % 3] for n in range(nodes)}
    mean_rt = {"high": 4.0, "mid": 12.0, "low": 35.0}
    known: dict[int, str] = {}  # tiers the server has learned from replies
    version, fill, accepted_total, refused_total, in_flight = 0, 0, 0, 0, 0
    queue: list[tuple[float, int, str, int]] = []  # (time, seq, what, node)
    seq = itertools.count()

    def dispatch(now: float, node: int) -> tuple[str, dict]:
        nonlocal in_flight
        in_flight += 1
        rt = mean_rt[tiers[node]] * rng.lognormvariate(0, 0.35)
        heapq.heappush(queue, (now + rt, next(seq), f"reply:{version}:{now}", node))
        return "dispatch", dict(
            time=round(now, 3),
            node=node,
            tier=known.get(node, "unknown"),
            version=version,
            bytes=71_720,
            in_flight=in_flight,
            **({"local_steps": {"high": 8, "mid": 3, "low": 1}[known[node]]} if node in known else {}),
        )

    yield "eval", dict(time=0.0, version=0, metrics={"loss": 2.31, "accuracy": 0.08}, loss=2.31, accuracy=0.08)
    for node in range(nodes):
        yield "node", dict(time=0.0, node=node, tier="unknown", state="admitted", online=node + 1)
    for node in range(nodes):
        yield dispatch(0.0, node)
    online = nodes
    while True:
        now, _, what, node = heapq.heappop(queue)
        if what == "admit":
            online += 1
            yield (
                "node",
                dict(time=round(now, 3), node=node, tier=known.get(node, "unknown"), state="admitted", online=online),
            )
            yield dispatch(now, node)
            continue
        in_flight -= 1
        _, sent_version, sent_at = what.split(":")
        round_trip = round(now - float(sent_at), 3)
        tier = known.get(node, "unknown")
        roll = rng.random()
        if roll < 0.02:
            yield "error", dict(time=round(now, 3), node=node, tier=tier, reason="ttl-expired")
        elif roll < 0.03:
            yield "error", dict(time=round(now, 3), node=node, tier=tier, reason="lost")
        elif roll < 0.04:
            yield "error", dict(time=round(now, 3), node=node, tier=tier, reason="client-crashed")
        elif roll < 0.05:
            yield "error", dict(time=round(now, 3), node=node, tier=tier, reason="node-unavailable")
            online -= 1
            yield "node", dict(time=round(now, 3), node=node, tier=tier, state="retired", online=online)
            heapq.heappush(queue, (now + 10.0, next(seq), "admit", node))
            continue
        elif roll < 0.09:
            refused_total += 1
            yield (
                "invalid",
                dict(
                    time=round(now, 3),
                    node=node,
                    tier=tier,
                    reason=rng.choice(("norm", "non-finite", "shape")),
                    round_trip=round_trip,
                ),
            )
        else:
            tier = known[node] = tiers[node]
            staleness = version - int(sent_version)
            outcome = "stale" if staleness > max_staleness else ("duplicate" if rng.random() < 0.03 else "accepted")
            if outcome == "accepted":
                fill += 1
                accepted_total += 1
            else:
                refused_total += 1
            stepped = fill >= buffer_size
            if stepped:
                fill, version = 0, version + 1
            yield (
                "update",
                dict(
                    time=round(now, 3),
                    node=node,
                    tier=tier,
                    outcome=outcome,
                    staleness=staleness,
                    weight=round((1 + staleness) ** -0.5, 6) if outcome == "accepted" else 0.0,
                    round_trip=round_trip,
                    train_seconds=round(round_trip * 0.4, 3),
                    bytes=71_720,
                    norm=NAN if rng.random() < 0.01 else round(rng.lognormvariate(0, 0.5), 6),
                    buffer_fill=fill,
                    device_kind="cpu" if tier != "high" else "cuda",
                ),
            )
            if stepped:
                if version % 2 == 0:
                    accuracy = 1 - 0.92 * math.exp(-version / 15)
                    # each tier's own held-out data: the slower the tier, the worse it is served
                    by_tier = {
                        t: round(accuracy - {"high": 0.0, "mid": 0.03, "low": 0.08}[t], 6) for t in set(known.values())
                    }
                    fairness = (
                        {
                            "accuracy_by_tier": by_tier,
                            "accuracy_gap": round(max(by_tier.values()) - min(by_tier.values()), 6),
                        }
                        if len(by_tier) > 1
                        else {}
                    )
                    yield (
                        "eval",
                        dict(
                            time=round(now, 3),
                            version=version,
                            metrics={"loss": round(2.3 * (1 - accuracy) + 0.1, 6), "accuracy": round(accuracy, 6)},
                            loss=round(2.3 * (1 - accuracy) + 0.1, 6),
                            accuracy=round(accuracy, 6),
                            **fairness,
                        ),
                    )
                    # the same version on the nodes' own held-out data, a little below the central
                    yield (
                        "federated-eval",
                        dict(
                            time=round(now, 3),
                            version=version,
                            metrics={"accuracy": round(accuracy - 0.02, 6), "loss": round(2.3 * (1 - accuracy), 6)},
                            metrics_by_tier={t: {"accuracy": v - 0.02} for t, v in by_tier.items()},
                            nodes=3,
                            examples=300,
                            failed=int(version % 8 == 0),
                        ),
                    )
                timer = version % 4 == 0
                yield (
                    "group-close",
                    dict(
                        time=round(now, 3),
                        group=version,
                        reason="timer" if timer else "complete",
                        arrived=buffer_size - int(timer),
                        late=int(timer),
                    ),
                )
                yield (
                    "step",
                    dict(
                        time=round(now, 3),
                        version=version,
                        in_flight=in_flight,
                        accepted=accepted_total,
                        refused=refused_total,
                        staleness_mean=1.0,
                        aggregate_seconds=round(rng.uniform(0.0002, 0.003), 6),
                        step_norm=round(2.0 / math.sqrt(version), 6),
                    ),
                )
        yield dispatch(now, node)


def write_history(path: Path, count: int, seed: int = 0) -> list[tuple[str, dict]]:
    """Write ``count`` synthetic events to ``path`` the way RunRecorder does."""
    events = list(itertools.islice(synthetic_events(seed), count))
    with open(path, "w", encoding="utf-8") as out:
        for kind, fields in events:
            out.write(json.dumps({"event": kind, **fields}) + "\n")
    return events


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def exporter():
    return MetricsExporter(MetricsConfig(port=0, straggler_deadline_seconds=60.0))


def value(exp: MetricsExporter, name: str, **labels: str) -> float | None:
    return exp.registry.get_sample_value(name, labels)


def feed(exp: MetricsExporter, *events: tuple[str, dict]) -> None:
    for kind, fields in events:
        exp.event(kind, **{"time": 1.0, **fields})


def update(**overrides) -> tuple[str, dict]:
    fields = dict(
        node=7,
        tier="high",
        outcome="accepted",
        staleness=2,
        weight=0.57,
        round_trip=4.5,
        train_seconds=1.5,
        bytes=1000,
        norm=0.8,
        buffer_fill=2,
        device_kind="cpu",
    )
    return "update", {**fields, **overrides}


def label_values(exp: MetricsExporter) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in exp.registry.collect():
        for sample in family.samples:
            for key, val in sample.labels.items():
                if key != "le":
                    found.setdefault(key, set()).add(val)
    return found


# -- series move as events say ---------------------------------------------------------------


def test_dispatch_counts_task_bytes_and_in_flight_by_tier(exporter):
    feed(
        exporter,
        ("dispatch", dict(node=1, tier="unknown", version=0, bytes=500, in_flight=1)),
        ("dispatch", dict(node=2, tier="mid", version=0, bytes=500, in_flight=2)),
    )
    assert value(exporter, "fl_tasks_dispatched_total", device_tier="unknown") == 1
    assert value(exporter, "fl_tasks_dispatched_total", device_tier="mid") == 1
    assert value(exporter, "fl_tasks_in_flight", device_tier="mid") == 1
    assert value(exporter, "fl_payload_bytes_total", direction="down") == 1000


def test_update_moves_every_series_it_carries(exporter):
    feed(
        exporter,
        ("dispatch", dict(node=7, tier="unknown", version=0, bytes=10, in_flight=1)),
        update(device_kind="cuda:1"),
    )
    assert value(exporter, "fl_updates_total", outcome="accepted", device_tier="high") == 1
    assert value(exporter, "fl_update_staleness_count") == 1
    assert value(exporter, "fl_update_staleness_sum") == 2
    assert value(exporter, "fl_update_staleness_bucket", le="1.0") == 0
    assert value(exporter, "fl_update_staleness_bucket", le="2.0") == 1
    assert value(exporter, "fl_round_trip_seconds_sum", device_tier="high") == 4.5
    assert value(exporter, "fl_client_train_seconds_sum", device_tier="high", device_kind="cuda") == 1.5
    assert value(exporter, "fl_update_norm_sum") == pytest.approx(0.8)
    assert value(exporter, "fl_payload_bytes_total", direction="up") == 1000
    assert value(exporter, "fl_buffer_fill") == 2
    # the task was dispatched while the node's tier was unknown: that slot is released
    assert value(exporter, "fl_tasks_in_flight", device_tier="unknown") == 0
    assert value(exporter, "fl_tasks_in_flight", device_tier="high") == 0
    assert value(exporter, "fl_stragglers_total", reason="deadline", device_tier="high") == 0


@pytest.mark.parametrize("outcome", ["stale", "duplicate"])
def test_refused_updates_are_counted_by_outcome(exporter, outcome):
    feed(exporter, update(outcome=outcome))
    assert value(exporter, "fl_updates_total", outcome=outcome, device_tier="high") == 1
    assert value(exporter, "fl_updates_total", outcome="accepted", device_tier="high") == 0
    assert value(exporter, "fl_update_staleness_count") == 1  # staleness on arrival of any valid update


def test_unknown_outcome_is_counted_as_other(exporter):
    feed(exporter, update(outcome="weird<script>"))
    assert value(exporter, "fl_updates_total", outcome="other", device_tier="high") == 1


def test_invalid_updates_by_reason_with_unknown_reasons_as_other(exporter):
    feed(
        exporter,
        ("dispatch", dict(node=3, tier="low", version=0, bytes=1, in_flight=1)),
        ("invalid", dict(node=3, tier="low", reason="norm", round_trip=70.0)),
        ("invalid", dict(node=3, tier="low", reason="made-up", round_trip=1.0)),
    )
    assert value(exporter, "fl_updates_total", outcome="invalid", device_tier="low") == 2
    assert value(exporter, "fl_invalid_updates_total", reason="norm") == 1
    assert value(exporter, "fl_invalid_updates_total", reason="other") == 1
    assert value(exporter, "fl_invalid_updates_total", reason="made-up") is None
    assert value(exporter, "fl_round_trip_seconds_count", device_tier="low") == 2
    assert value(exporter, "fl_stragglers_total", reason="deadline", device_tier="low") == 1
    assert value(exporter, "fl_tasks_in_flight", device_tier="low") == 0


def test_ttl_expiry_is_a_straggler_and_other_errors_are_dropouts(exporter):
    reasons = [
        "ttl-expired",
        "node-unavailable",
        "lost",
        "client-raised",
        "client-crashed",
        "client-load-failed",
        "other-error",
        "something-new",
    ]
    feed(exporter, *[("error", dict(node=1, tier="mid", reason=r)) for r in reasons])
    assert value(exporter, "fl_updates_total", outcome="error", device_tier="mid") == len(reasons)
    assert value(exporter, "fl_stragglers_total", reason="ttl", device_tier="mid") == 1
    for reason in ("node-unavailable", "lost", "client-raised", "client-crashed", "client-load-failed"):
        assert value(exporter, "fl_dropouts_total", reason=reason, device_tier="mid") == 1
    assert value(exporter, "fl_dropouts_total", reason="other-error", device_tier="mid") == 2
    assert value(exporter, "fl_dropouts_total", reason="ttl-expired", device_tier="mid") is None


@pytest.mark.parametrize(
    ("deadline", "round_trip", "late"), [(60.0, 60.0, 0), (60.0, 60.5, 1), (0.0, 1e6, 0), (5.0, 4.9, 0)]
)
def test_deadline_stragglers_are_replies_slower_than_the_deadline(deadline, round_trip, late):
    exp = MetricsExporter(MetricsConfig(port=0, straggler_deadline_seconds=deadline))
    feed(exp, update(round_trip=round_trip))
    assert value(exp, "fl_stragglers_total", reason="deadline", device_tier="high") == late
    assert value(exp, "fl_updates_total", outcome="accepted", device_tier="high") == 1  # still used


def test_steps_move_version_and_time_buffer_fills_and_aggregation(exporter):
    exporter.event(
        "step", time=10.0, version=1, in_flight=3, accepted=3, refused=0, staleness_mean=0.0, aggregate_seconds=0.002
    )
    exporter.event(
        "step", time=14.0, version=2, in_flight=3, accepted=6, refused=0, staleness_mean=0.5, aggregate_seconds=0.001
    )
    assert value(exporter, "fl_server_steps_total") == 2
    assert value(exporter, "fl_model_version") == 2
    assert value(exporter, "fl_aggregation_duration_seconds_sum") == pytest.approx(0.003)
    # the first buffer took 10 s from the run's start, the second 4 s
    assert value(exporter, "fl_buffer_fill_duration_seconds_sum") == pytest.approx(14.0)
    assert value(exporter, "fl_buffer_fill_duration_seconds_bucket", le="5.0") == 1
    assert value(exporter, "fl_buffer_fill_duration_seconds_count") == 2


def test_eval_sets_loss_accuracy_and_version(exporter):
    exporter.event("eval", time=3.0, version=5, loss=0.7, accuracy=0.81)
    assert value(exporter, "fl_eval_loss") == 0.7
    assert value(exporter, "fl_eval_accuracy_ratio") == 0.81
    assert value(exporter, "fl_eval_model_version") == 5


def test_connected_nodes_by_tier_follow_admission_replies_and_retirement(exporter):
    feed(
        exporter,
        ("node", dict(node=1, tier="unknown", state="admitted", online=1)),
        ("node", dict(node=2, tier="unknown", state="admitted", online=2)),
    )
    assert value(exporter, "fl_connected_nodes", device_tier="unknown") == 2
    feed(exporter, update(node=1, tier="low"))
    assert value(exporter, "fl_connected_nodes", device_tier="unknown") == 1
    assert value(exporter, "fl_connected_nodes", device_tier="low") == 1
    feed(
        exporter,
        ("node", dict(node=1, tier="low", state="retired", online=1)),
        ("node", dict(node=1, tier="low", state="retired", online=1)),  # twice: counted once
        ("node", dict(node=9, tier="high", state="retired", online=1)),
    )  # never admitted
    assert value(exporter, "fl_connected_nodes", device_tier="low") == 0
    assert value(exporter, "fl_connected_nodes", device_tier="high") == 0
    assert value(exporter, "fl_connected_nodes", device_tier="unknown") == 1
    feed(exporter, ("node", dict(node=2, tier="unknown", state="left", online=0)))
    assert value(exporter, "fl_connected_nodes", device_tier="unknown") == 0


def test_run_constants_privacy_and_build_info(exporter):
    exporter.describe_run(buffer_size=3, max_staleness=0, concurrency=6)
    exporter.set_privacy(1.25, delta=1e-5)
    assert value(exporter, "fl_buffer_size") == 3
    assert value(exporter, "fl_max_staleness") == 0
    assert value(exporter, "fl_concurrency") == 6
    assert value(exporter, "fl_privacy_epsilon") == 1.25
    assert value(exporter, "fl_privacy_delta") == 1e-5
    [info] = [s for f in exporter.registry.collect() if f.name == "fl_build_info" for s in f.samples]
    assert info.value == 1 and info.labels["version"] and info.labels["flwr_version"]


def test_counters_and_tier_gauges_exist_at_zero_before_any_event(exporter):
    for tier in m.TIERS:
        for outcome in m.OUTCOMES:
            assert value(exporter, "fl_updates_total", outcome=outcome, device_tier=tier) == 0
        assert value(exporter, "fl_tasks_in_flight", device_tier=tier) == 0
        assert value(exporter, "fl_connected_nodes", device_tier=tier) == 0
    assert value(exporter, "fl_server_steps_total") == 0


# -- bounded labels ---------------------------------------------------------------------------


def test_client_supplied_strings_never_become_label_values(exporter):
    weird = ['ultra"}{', "HIGH", "x" * 500, None, 3, "node-123"]
    nodes = [987_654_321_012_345 + i for i in range(len(weird))]
    for node, tier in zip(nodes, weird, strict=True):
        feed(
            exporter,
            ("node", dict(node=node, tier=tier, state="admitted", online=1)),
            ("dispatch", dict(node=node, tier=tier, version=0, bytes=1, in_flight=1)),
            update(node=node, tier=tier, device_kind=tier, dropped_fields=[tier, "train-loss"]),
            ("invalid", dict(node=node, tier=tier, reason=tier, round_trip=1.0)),
            ("error", dict(node=node, tier=tier, reason=tier)),
            ("step-refused", dict(version=0, reason=tier)),
        )
    for kind in ("tpu", "CUDA:0", "mps", "cpu ", "gpu"):
        feed(exporter, update(device_kind=kind))
    allowed = {
        "device_tier": set(m.TIERS),
        "device_kind": set(m.DEVICE_KINDS),
        "outcome": set(m.OUTCOMES) | {"other"},
        "reason": (
            set(m.INVALID_REASONS)
            | set(m.DROPOUT_REASONS)
            | set(m.STRAGGLER_REASONS)
            | set(STEP_GUARD_REASONS)
            | set(CLOSE_REASONS)
            | {"other"}
        ),
        "field": set(DROPPED_FIELDS),
        "direction": set(m.DIRECTIONS),
        "metric": {"fl_round_trip_seconds"},
        "version": None,
        "flwr_version": None,
        "python_version": None,  # build info only
    }
    for key, values in label_values(exporter).items():
        assert key in allowed, f"unexpected label {key}"
        if allowed[key] is not None:
            assert values <= allowed[key], f"{key}: {values - allowed[key]}"
    assert label_values(exporter)["device_kind"] == {"cuda", "mps", "cpu", "unknown"}
    text = generate_latest(exporter.registry).decode()
    assert "node-123" not in text and "ultra" not in text and "HIGH" not in text
    assert not any(str(node) in text for node in nodes)


def test_non_finite_values_are_dropped_and_counted_never_observed(exporter):
    feed(
        exporter,
        ("dispatch", dict(node=1, tier="high", version=0, bytes=NAN, in_flight=1)),
        update(staleness=INF, round_trip=NAN, train_seconds=-INF, norm=NAN, bytes="lots", buffer_fill=NAN),
        ("invalid", dict(node=1, tier="high", reason="norm", round_trip=INF)),
        (
            "step",
            dict(version=NAN, aggregate_seconds=INF, time=NAN, in_flight=0, accepted=0, refused=0, staleness_mean=0.0),
        ),
        ("eval", dict(version=1, loss=NAN, accuracy=INF)),
    )
    exporter.set_privacy(NAN)
    exporter.describe_run(buffer_size=INF)
    for family in exporter.registry.collect():
        for sample in family.samples:
            assert math.isfinite(sample.value), sample
    assert value(exporter, "fl_update_staleness_count") == 0
    assert value(exporter, "fl_update_norm_count") == 0
    assert value(exporter, "fl_round_trip_seconds_count", device_tier="high") is None
    assert value(exporter, "fl_server_steps_total") == 1  # the step itself still counts
    dropped = {
        name: value(exporter, "fl_dropped_observations_total", metric=name)
        for name in (
            "fl_payload_bytes_total",
            "fl_update_staleness",
            "fl_round_trip_seconds",
            "fl_client_train_seconds",
            "fl_update_norm",
            "fl_buffer_fill",
            "fl_model_version",
            "fl_aggregation_duration_seconds",
            "fl_eval_loss",
            "fl_eval_accuracy_ratio",
            "fl_privacy_epsilon",
            "fl_buffer_size",
        )
    }
    assert dropped == {**{k: 1 for k in dropped}, "fl_payload_bytes_total": 2, "fl_round_trip_seconds": 2}


def test_missing_fields_are_skipped_without_counting_drops(exporter):
    exporter.event("update", time=1.0, node=1, tier="mid", outcome="accepted")  # an older schema
    exporter.event("step", version=1)
    assert value(exporter, "fl_updates_total", outcome="accepted", device_tier="mid") == 1
    assert value(exporter, "fl_model_version") == 1
    assert not any(
        s.name.startswith("fl_dropped_observations") and s.value for f in exporter.registry.collect() for s in f.samples
    )


def test_the_exporter_never_raises_into_the_loop(exporter):
    exporter.event("dispatch", time=1.0, node=["unhashable"], tier="high", bytes=1)
    exporter.event("no-such-kind", time=1.0)
    assert value(exporter, "fl_exporter_errors_total") == 1


# -- a whole run ------------------------------------------------------------------------------


def test_a_synthetic_run_keeps_the_books_balanced(exporter):
    events = list(itertools.islice(synthetic_events(seed=3), 3000))
    for kind, fields in events:
        exporter.event(kind, **fields)
    kinds = [k for k, _ in events]
    replies = kinds.count("update") + kinds.count("invalid") + kinds.count("error")
    dispatched = sum(value(exporter, "fl_tasks_dispatched_total", device_tier=t) for t in m.TIERS)
    in_flight = sum(value(exporter, "fl_tasks_in_flight", device_tier=t) for t in m.TIERS)
    outcomes = sum(value(exporter, "fl_updates_total", outcome=o, device_tier=t) for o in m.OUTCOMES for t in m.TIERS)
    assert dispatched == kinds.count("dispatch")
    assert outcomes == replies
    assert in_flight == dispatched - replies
    assert all(value(exporter, "fl_tasks_in_flight", device_tier=t) >= 0 for t in m.TIERS)
    assert value(exporter, "fl_server_steps_total") == kinds.count("step")
    connected = sum(value(exporter, "fl_connected_nodes", device_tier=t) for t in m.TIERS)
    last_online = [f["online"] for k, f in events if k == "node"][-1]
    assert connected == last_online
    assert value(exporter, "fl_dropped_observations_total", metric="fl_update_norm") > 0


# -- configuration and serving -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [dict(port=-1), dict(port=70000), dict(straggler_deadline_seconds=-1.0), dict(straggler_deadline_seconds=NAN)],
)
def test_metrics_config_is_validated(bad):
    with pytest.raises(ValueError):
        MetricsConfig(**bad)


def test_defaults_are_loopback_on_a_fixed_port():
    config = MetricsConfig()
    assert (config.address, config.port) == ("127.0.0.1", m.DEFAULT_PORT)


@pytest.mark.timeout(30)
def test_start_serves_its_own_registry_on_a_free_port_and_close_stops_it(exporter):
    url = exporter.start()
    try:
        assert url == f"http://127.0.0.1:{exporter.port}/metrics" and exporter.port > 0
        with pytest.raises(RuntimeError):
            exporter.start()
        exporter.event("step", time=1.0, version=1, aggregate_seconds=0.001)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        assert "fl_model_version 1.0" in body and "fl_build_info{" in body
        assert REGISTRY.get_sample_value("fl_model_version") is None  # never the global registry
    finally:
        exporter.close()
    exporter.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.timeout(30)
def test_a_taken_port_raises_oserror(exporter):
    exporter.start()
    try:
        clash = MetricsExporter(MetricsConfig(port=exporter.port))
        with pytest.raises(OSError):
            clash.start()
    finally:
        exporter.close()


def test_client_dp_sgd_epsilon_is_the_largest_reported_per_tier():
    exporter = MetricsExporter(MetricsConfig(port=0))
    for node, tier, eps in ((1, "low", 0.5), (2, "low", 1.5), (1, "low", 1.0), (3, "high", 0.2)):
        exporter.event("update", time=1.0, node=node, tier=tier, outcome="accepted", staleness=0, dp_epsilon=eps)
    exporter.event("update", time=2.0, node=3, tier="high", outcome="accepted", dp_epsilon=float("nan"))
    assert exporter.registry.get_sample_value("fl_client_dp_epsilon", {"device_tier": "low"}) == 1.5
    assert exporter.registry.get_sample_value("fl_client_dp_epsilon", {"device_tier": "high"}) == 0.2
    assert exporter.registry.get_sample_value("fl_client_dp_epsilon", {"device_tier": "mid"}) == 0.0


def test_the_synthetic_stream_keeps_to_the_event_schema():
    """What the dashboard tests feed the exporter is what the loop writes (server_app/events.py)."""
    from server_app.events import shape_errors

    problems = [
        p for kind, fields in itertools.islice(synthetic_events(seed=1), 3000) for p in shape_errors(kind, fields)
    ]
    assert not problems, problems
