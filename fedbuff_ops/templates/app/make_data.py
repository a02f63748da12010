"""Make stand-in data: one file of synthetic 28×28 images per node, and one for the server.

    python make_data.py --nodes 3            # data/node-0.npz … data/node-2.npz, data/server-test.npz

Each class is a fixed random pattern plus noise, so the CNN in task.py learns it within a few
server steps. Each node gets its own mix of classes (nodes never hold the same data). Replace
these files with your nodes' real data: task.py reads ``x`` (N×28×28) and ``y`` (N labels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NUM_CLASSES = 10


def images(patterns: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One noisy copy of its class's pattern per label, pixels in [0, 1]."""
    noise = rng.normal(0.0, 0.3, size=(len(labels), 28, 28))
    return np.clip(patterns[labels] + noise, 0.0, 1.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="how many node files (default 3)")
    parser.add_argument("--examples", type=int, default=500, help="examples per node (default 500)")
    parser.add_argument("--out", type=Path, default=Path("data"), help="where to write them (default data/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    patterns = (rng.random((NUM_CLASSES, 28, 28)) > 0.7).astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    for node in range(args.nodes):
        class_mix = rng.dirichlet(np.ones(NUM_CLASSES))  # non-IID: each node its own mix
        labels = rng.choice(NUM_CLASSES, size=args.examples, p=class_mix)
        np.savez_compressed(args.out / f"node-{node}.npz", x=images(patterns, labels, rng), y=labels)
    labels = rng.integers(0, NUM_CLASSES, size=1000)
    np.savez_compressed(args.out / "server-test.npz", x=images(patterns, labels, rng), y=labels)
    print(f"wrote {args.nodes} node files and server-test.npz to {args.out}/")


if __name__ == "__main__":
    main()
