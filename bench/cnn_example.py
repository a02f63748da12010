"""A task of a user's own on the engine: examples/fashion-cnn (a 421,642-parameter CNN on
Fashion-MNIST's 28×28 images), FedBuff against Flower's own FedAvg, time to a stated accuracy.

Six SuperNodes of tiers low / mid / high on the warm path, FLASH's high-tier batch time
(``emulated-step-seconds=0.179``; the tiers 1 / 3.3 / 9.2 × that), ``--local-steps`` batches
per task, seeds 1–3 run seeds outermost; the server evaluates every version on the first
``--test-limit`` test images. Also the model's size and the bytes each update carries.

Run: .venv/bin/python -m bench.cnn_example [--target 0.7] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import os

from bench.federation import ROOT
from bench.time_to_accuracy import Scenario, comparison_table, run_strategies

APP = ROOT / "examples" / "fashion-cnn"
FLASH_HIGH_TIER_STEP_SECONDS = 0.179


def model_size() -> tuple[int, int]:
    """The CNN's parameter count and float32 bytes (what a dispatch and a plaintext update carry)."""
    from fedbuff.model import get_weights
    from fedbuff.training import build_model
    from fedbuff_ops.app_task import app_defaults, app_task

    model = build_model(app_task(APP, app_defaults(APP)), 0)
    return sum(p.numel() for p in model.parameters()), sum(a.nbytes for a in get_weights(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--max-wall-seconds", type=float, default=600.0)
    args = parser.parse_args()
    scenario = Scenario(
        dataset="fashion-cnn example",
        target=args.target,
        fedavg_rounds=60,
        max_wall_seconds=args.max_wall_seconds,
        local_steps=args.local_steps,
        step_seconds=FLASH_HIGH_TIER_STEP_SECONDS,
        app_dir=APP,
        extra=f"test-limit={args.test_limit}",
    )
    parameters, size = model_size()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    print(f"model: {parameters:,} parameters, {size:,} bytes as float32 (a dispatch and a plaintext update each)")
    outcomes = run_strategies(scenario, ["fedbuff", "flower-fedavg"], [int(s) for s in args.seeds.split(",")])
    print(comparison_table(scenario, outcomes))


if __name__ == "__main__":
    main()
