"""``fedbuff fairness``: one FedBuff run with device tiers independent of the data, one
with tiers tied to it, and the fairness gap of both (docs/heterogeneity.md, the RF² comparison).

Both runs use ``partitioner=tier-correlated``, so every client holds the same rows in
both; only ``tier-strength`` differs (0: the independent baseline; > 0: a client's tier
follows its dominant labels). Each node gets the tier the run's assignment says
(:func:`fedbuff_ops.launcher.planned_tiers`). The report: per tier, its nodes, its share of
accepted updates and its accuracy on its own held-out data; the largest gap between tiers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fedbuff_ops.launcher import LocalFederation, format_run_config, parse_run_config, planned_tiers, run_local

# Label skew strong enough that "which tier holds which labels" matters (docs/heterogeneity.md).
BASE_CONFIG = 'partitioner="tier-correlated" dirichlet-alpha=0.3'
RUNS = ("independent", "tier-correlated")
TIER_ORDER = ("high", "mid", "low", "real")


@dataclass(frozen=True)
class FairnessComparison:
    """Two local federations that differ only in ``tier-strength``; later ``-c`` keys win."""

    app_dir: Path
    out_dir: Path
    num_nodes: int = 6
    strength: float = 100.0
    run_config: str = ""

    def config(self, run: str) -> str:
        """The run config of ``run``: the base, then ``run_config``, then its tier-strength."""
        strength = 0.0 if run == "independent" else self.strength
        return format_run_config(parse_run_config([BASE_CONFIG, self.run_config, f"tier-strength={strength}"]))


def compare(comparison: FairnessComparison, out: IO[str] = sys.stdout) -> dict[str, dict[str, object]]:
    """Run both federations one after the other; return ``{run: summary + tiers}``, also
    written to ``<out_dir>/fairness.json``."""
    results: dict[str, dict[str, object]] = {}
    for run in RUNS:
        config = comparison.config(run)
        tiers = planned_tiers(comparison.num_nodes, config)
        federation = LocalFederation(
            app_dir=comparison.app_dir,
            run_dir=comparison.out_dir / run,
            num_nodes=comparison.num_nodes,
            tiers=tiers,
            run_config=config,
        )
        out.write(f"[fedbuff] fairness: {run} run (tiers {', '.join(tiers)})\n")
        results[run] = {**run_local(federation, out), "node_tiers": tiers}
    comparison.out_dir.mkdir(parents=True, exist_ok=True)
    (comparison.out_dir / "fairness.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def report(results: Mapping[str, Mapping[str, Any]], strength: float) -> str:
    """The comparison as a table a person reads (``n/a``: the tier had nothing to measure)."""
    # Any: a run's summary is JSON-shaped (numbers, per-tier dicts, the list of node tiers)
    ind, cor = (results[r] for r in RUNS)
    tiers = [t for t in TIER_ORDER if any(t in r["node_tiers"] for r in (ind, cor))]

    def value(summary: Mapping[str, Any], key: str, tier: str | None = None) -> str:
        number = summary.get(key)
        if tier is not None:
            number = (number or {}).get(tier)
        return "n/a" if number is None else f"{float(number):.3f}"

    rows = [("tier", "nodes", "participation ind / corr", "accuracy ind / corr")]
    for tier in tiers:
        nodes = ind["node_tiers"].count(tier)
        rows.append(
            (
                tier,
                str(nodes),
                f"{value(ind, 'participation_by_tier', tier)} / {value(cor, 'participation_by_tier', tier)}",
                f"{value(ind, 'accuracy_by_tier', tier)} / {value(cor, 'accuracy_by_tier', tier)}",
            )
        )
    rows.append(
        ("all", str(len(ind["node_tiers"])), "", f"{value(ind, 'final_accuracy')} / {value(cor, 'final_accuracy')}")
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"\n=== fairness: FedBuff, tiers independent of the data (tier-strength 0) vs "
        f"tier-correlated (tier-strength {strength:g}) ==="
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(
        f"largest accuracy gap between tiers: independent {value(ind, 'accuracy_gap')}, "
        f"tier-correlated {value(cor, 'accuracy_gap')}"
    )
    return "\n".join(lines)
