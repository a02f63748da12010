"""End to end: a tier-correlated FedBuff run on real SuperLink + SuperNode processes reports
per-tier accuracy and participation (summary, history, plots). About a minute."""

from __future__ import annotations

import json
import sys

import pytest

from fedbuff_ops.launcher import LocalFederation, planned_tiers, run_local
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_a_tier_correlated_run_reports_per_tier_accuracy_and_participation(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    # Mild speed ratios so that every tier answers within the few steps a test can afford.
    config = (
        'partitioner="tier-correlated" dirichlet-alpha=0.5 tier-strength=100 warmup-steps=20 '
        'task-jitter="lognormal" tier-speed-ratios="high=1.0,mid=1.5,low=2.0" '
        "emulated-step-seconds=0.01 max-server-steps=4 buffer-size=2 concurrency=3 eval-every=2 "
        "metrics-port=0"
    )
    tiers = planned_tiers(3, config)
    assert sorted(tiers) == ["high", "low", "mid"]
    summary = run_local(
        LocalFederation(app_dir=ROOT, run_dir=run_dir, num_nodes=3, tiers=tiers, run_config=config), out=sys.stdout
    )

    assert summary["server_steps"] == 4
    assert summary["initial_model"].startswith("warm-up (20 steps")
    participation = summary["participation_by_tier"]
    assert set(participation) == set(summary["accepted_by_tier"]) and len(participation) >= 2
    assert sum(participation.values()) == pytest.approx(1.0, abs=1e-3)
    by_tier = summary["accuracy_by_tier"]
    assert set(participation) <= set(by_tier) <= set(tiers)
    assert all(0.0 <= a <= 1.0 for a in by_tier.values())
    assert summary["accuracy_gap"] == pytest.approx(max(by_tier.values()) - min(by_tier.values()))

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [e for e in events if e["event"] == "update"]
    assert {(e["tier"], e["partition"]) for e in updates} <= {(t, p) for p, t in enumerate(tiers)}
    last_eval = [e for e in events if e["event"] == "eval"][-1]
    assert last_eval["accuracy_by_tier"] == by_tier and last_eval["accuracy_gap"] == summary["accuracy_gap"]
    assert (run_dir / "plots" / "accuracy_by_tier.png").is_file()
