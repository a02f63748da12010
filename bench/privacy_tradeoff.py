"""Accuracy against user-level ε on digits: a real local federation per noise multiplier.

Run: .venv/bin/python bench/privacy_tradeoff.py [--sigmas 0,0.3,1,3] [--steps 12]
Prints a Markdown table (σ, ε at δ, final accuracy, server steps) for docs/privacy.md, "Accuracy against ε",
and plots accuracy against ε.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from bench.federation import check_configs
from bench.figures import figure_line, save_figure
from fedbuff_ops.launcher import LocalFederation, run_local

ROOT = Path(__file__).resolve().parents[1]


def run_config(sigma: float, args: argparse.Namespace) -> str:
    """The run config of the point at noise multiplier ``sigma`` (0: user-level DP off)."""
    config = (
        f"max-server-steps={args.steps} buffer-size=2 concurrency={args.nodes} "
        f"eval-every={args.steps} metrics-port=0 write-plots=false"
    )
    if sigma > 0:
        config += f' user-dp=true user-dp-mode="central" user-dp-clip={args.clip} user-dp-noise-multiplier={sigma}'
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sigmas", default="0,0.3,1,3", help="noise multipliers; 0 = user-dp off")
    parser.add_argument("--steps", type=int, default=12, help="server steps per run")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clip", type=float, default=1.0, help="user-dp-clip (L2)")
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    check_configs(run_config(sigma, args) for sigma in sigmas)
    print("| user-dp-noise-multiplier | ε (δ = 1e-5) | final accuracy | server steps |")
    print("|---|---|---|---|")
    points: list[tuple[float, float]] = []  # (ε, accuracy) of the private runs
    baseline = None
    for sigma in sigmas:
        config = run_config(sigma, args)
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_local(
                LocalFederation(
                    app_dir=ROOT, run_dir=Path(tmp) / "run", num_nodes=args.nodes, tiers=["high"], run_config=config
                ),
                out=io.StringIO(),
            )
        epsilon = f"{summary['user_dp_epsilon']:.2f}" if sigma > 0 else "∞ (no DP)"
        print(f"| {sigma:g} | {epsilon} | {summary['final_accuracy']:.3f} | {summary['server_steps']} |", flush=True)
        if sigma > 0:
            points.append((float(summary["user_dp_epsilon"]), float(summary["final_accuracy"])))
        else:
            baseline = float(summary["final_accuracy"])

    def draw(axes) -> None:
        axes.plot(*zip(*sorted(points)), "o-", label="user-level DP (central noise)")
        if baseline is not None:
            axes.axhline(baseline, color="grey", linestyle=":", label="no DP")
        axes.set_xscale("log")
        axes.set_xlabel("ε (δ = 1e-5)")
        axes.set_ylabel("final accuracy")

    if points:
        print(
            "\n"
            + figure_line(
                save_figure("privacy_tradeoff", draw, f"digits, {args.nodes} nodes, {args.steps} server steps"),
                "final accuracy against ε",
            )
        )


if __name__ == "__main__":
    main()
