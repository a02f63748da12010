"""Accuracy against user-level ε on digits: a real local federation per noise multiplier.

Run: .venv/bin/python bench/privacy_tradeoff.py [--sigmas 0,0.3,1,3] [--steps 12]
Prints a Markdown table (σ, ε at δ, final accuracy, server steps) for README's Privacy section.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from fedbuff.launcher import LocalFederation, run_local

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sigmas", default="0,0.3,1,3", help="noise multipliers; 0 = user-dp off")
    parser.add_argument("--steps", type=int, default=12, help="server steps per run")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clip", type=float, default=1.0, help="user-dp-clip (L2)")
    args = parser.parse_args()
    print(f"| user-dp-noise-multiplier | ε (δ = 1e-5) | final accuracy | server steps |")
    print("|---|---|---|---|")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        config = (f"max-server-steps={args.steps} buffer-size=2 concurrency={args.nodes} "
                  f"eval-every={args.steps} metrics-port=0 write-plots=false")
        if sigma > 0:
            config += f' user-dp=true user-dp-mode="central" user-dp-clip={args.clip} user-dp-noise-multiplier={sigma}'
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_local(
                LocalFederation(app_dir=ROOT, run_dir=Path(tmp) / "run", num_nodes=args.nodes,
                                tiers=["high"], run_config=config),
                out=io.StringIO(),
            )
        epsilon = f"{summary['user_dp_epsilon']:.2f}" if sigma > 0 else "∞ (no DP)"
        print(f"| {sigma:g} | {epsilon} | {summary['final_accuracy']:.3f} | {summary['server_steps']} |",
              flush=True)


if __name__ == "__main__":
    main()
