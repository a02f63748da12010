"""RF² at scale on the virtual clock: the fairness cost of an optimization that favours fast
devices, with device tiers independent of the data and tied to it.

RF² (Huang et al.) finds the fairness impact of such an optimization under-estimated 15.8–41×
when system and data heterogeneity are modelled as independent. Here: FedBuff (K = 10) with and
without ``max-staleness`` (which drops the slow tiers' stale updates), each with tiers drawn
independently of the labels (``tier-strength=0``) and tied to them (``tier-strength=100``), the
same rows per client in all four runs, 300 virtual clients with at least 100 per tier, on
Fashion-MNIST split by Dirichlet alpha 0.3. The impact is RF²'s: the largest difference between
tiers in relative accuracy change against the baseline, each tier measured on its own held-out
data. Accuracy does not depend on this machine's load (the clock is virtual).

Run: .venv/bin/python -m bench.rf2_scale [--quick] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import time

from bench.federation import BenchRun, check_configs
from bench.report import markdown_table, ratio
from bench.simulation_scale import run_with_retry

BUFFER_SIZE = 10
RF2_CLIENTS = 300
RF2_TIERS = 'tier-mix="high=0.34,mid=0.33,low=0.33"'  # >= 100 clients per tier
RF2_STEPS = 150
RF2_MAX_STALENESS = 10
STRENGTHS = {"independent": 0, "tier-correlated": 100}


def rf2_config(strength: int, max_staleness: int, seed: int) -> str:
    return (
        f'virtual-clock=true task="fashion-mnist" partitioner="tier-correlated" dirichlet-alpha=0.3 '
        f'task-jitter="lognormal" {RF2_TIERS} tier-strength={strength} max-staleness={max_staleness} '
        f'strategy="fedbuff" buffer-size={BUFFER_SIZE} concurrency=100 seed={seed} '
        f"max-server-steps={RF2_STEPS} eval-every={RF2_STEPS}"
    )


def rf2_accuracy(strength: int, max_staleness: int, seed: int) -> dict[str, float] | None:
    """Per-tier accuracy after ``RF2_STEPS`` FedBuff steps (None: the run did not finish)."""
    spec = BenchRun(
        RF2_CLIENTS,
        rf2_config(strength, max_staleness, seed),
        tiers=["real"],
        simulation=True,
        label=f"RF2 tier-strength {strength} max-staleness {max_staleness}",
    )
    result = run_with_retry(spec)
    if result is None:
        return None
    return {str(k): float(v) for k, v in dict(result.summary["accuracy_by_tier"]).items()}  # type: ignore[call-overload]


def fairness_impact(baseline: dict[str, float], optimized: dict[str, float]) -> float:
    """RF²'s impact: the largest difference between tiers in relative accuracy change."""
    change = [(optimized[tier] - baseline[tier]) / baseline[tier] for tier in baseline if tier in optimized]
    return max(change) - min(change)


def rf2_table(seeds: list[int]) -> str:
    rows, impacts = [], {}
    for name, strength in STRENGTHS.items():
        found = []
        for seed in seeds:
            baseline, optimized = rf2_accuracy(strength, 0, seed), rf2_accuracy(strength, RF2_MAX_STALENESS, seed)
            if baseline is not None and optimized is not None:
                found.append((fairness_impact(baseline, optimized), baseline, optimized))
        if not found:
            rows.append([name, "—", "—", "—"])
            continue
        found.sort(key=lambda item: item[0])
        impacts[name], baseline, optimized = found[len(found) // 2]  # the median seed's (upper middle)
        tiers = sorted(baseline)
        rows.append(
            [
                name,
                " / ".join(f"{tier} {baseline[tier]:.3f}" for tier in tiers),
                " / ".join(f"{tier} {optimized.get(tier, float('nan')):.3f}" for tier in tiers),
                f"{impacts[name]:.4f}",
            ]
        )
    table = markdown_table(
        ["tiers", "accuracy by tier, baseline", f"with max-staleness={RF2_MAX_STALENESS}", "fairness impact"], rows
    )
    if len(impacts) == 2:
        table += (
            f"\n\nImpact under tier-correlated data / under independent tiers: "
            f"{ratio(impacts['tier-correlated'], impacts['independent'])} (RF², recommendation tasks: 15.8–41×)."
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    check_configs(rf2_config(strength, RF2_MAX_STALENESS, seeds[0]) for strength in STRENGTHS.values())
    started = time.monotonic()
    print(
        f"{RF2_CLIENTS} virtual clients ({RF2_TIERS.split('=', 1)[1]}), Fashion-MNIST rows by Dirichlet alpha "
        f"0.3, FedBuff K = {BUFFER_SIZE} at concurrency 100 with lognormal jitter, {RF2_STEPS} server steps; "
        f"{len(seeds)} seed(s), the median impact (per-tier accuracies of the median seed's runs).\n"
    )
    print(rf2_table(seeds))
    print(f"\nThe suite took {(time.monotonic() - started) / 60:.0f} min.")


if __name__ == "__main__":
    main()
