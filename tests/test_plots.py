"""End-of-run plots: PNGs from a run folder's metrics.jsonl, tolerant of odd histories."""

from __future__ import annotations

import json
import subprocess
import sys

from server_app.plots import write_plots
from tests.test_metrics import write_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CORE_PLOTS = {"accuracy_vs_time.png", "staleness_histogram.png", "participation_by_tier.png", "round_trip_by_tier.png"}


def test_a_synthetic_run_gets_its_plots(tmp_path):
    write_history(tmp_path / "metrics.jsonl", 1500)
    written = write_plots(tmp_path)
    assert {p.name for p in written} == CORE_PLOTS | {"accuracy_by_tier.png"}  # its evals carry tiers
    for path in written:
        assert path.parent == tmp_path / "plots"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_per_tier_accuracy_is_plotted_when_evaluations_carry_it(tmp_path):
    lines = [
        {
            "event": "eval",
            "time": t,
            "version": t,
            "loss": 1.0,
            "accuracy": 0.5,
            "accuracy_by_tier": {"high": 0.6, "low": 0.4},
        }
        for t in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert {p.name for p in write_plots(tmp_path)} == {"accuracy_vs_time.png", "accuracy_by_tier.png"}


def test_odd_histories_never_break_the_end_of_the_run(tmp_path):
    assert write_plots(tmp_path) == []  # no metrics.jsonl
    (tmp_path / "metrics.jsonl").write_text("")
    assert write_plots(tmp_path) == [] and not (tmp_path / "plots").exists()
    (tmp_path / "metrics.jsonl").write_text(
        'not json\n[1, 2]\n{"no": "event"}\n'
        + json.dumps({"event": "eval", "time": 1.0, "accuracy": float("nan"), "loss": 1.0})
        + "\n"
        + json.dumps(
            {
                "event": "update",
                "time": 2.0,
                "tier": "high",
                "outcome": "accepted",
                "staleness": 1,
                "round_trip": float("inf"),
            }
        )
        + "\n"
        + json.dumps({"event": "update", "time": 3.0, "tier": "high", "outcome": "accepted"})
        + "\n"
    )
    assert {p.name for p in write_plots(tmp_path)} == {"staleness_histogram.png", "participation_by_tier.png"}


def test_matplotlib_is_imported_only_when_plotting():
    code = "import sys, server_app.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
