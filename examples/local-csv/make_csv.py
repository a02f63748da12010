"""Write one synthetic CSV file per node: ``num-features`` feature columns and a label.

    python make_csv.py --nodes 2 --out data          # data/node-0.csv, data/node-1.csv

The classes are Gaussian clusters shared by all nodes; each node draws its own mix of classes
and its own feature shift (nodes measure differently), so no two files are alike. Data files
are never committed: make them where you run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rows", type=int, default=300, help="rows per node (default 300)")
    parser.add_argument("--features", type=int, default=8, help="the app's num-features (default 8)")
    parser.add_argument("--classes", type=int, default=3, help="the app's num-classes (default 3)")
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centers = rng.normal(0.0, 2.0, size=(args.classes, args.features))
    header = ",".join([*(f"f{i}" for i in range(args.features)), "label"])
    args.out.mkdir(parents=True, exist_ok=True)
    for node in range(args.nodes):
        labels = rng.choice(args.classes, size=args.rows, p=rng.dirichlet(np.ones(args.classes) * 2))
        shift = rng.normal(0.0, 0.3, size=args.features)
        features = centers[labels] + shift + rng.normal(0.0, 1.0, size=(args.rows, args.features))
        table = np.column_stack([features, labels])
        fmt = ["%.5f"] * args.features + ["%d"]
        np.savetxt(args.out / f"node-{node}.csv", table, delimiter=",", header=header, comments="", fmt=fmt)
    print(f"wrote {args.nodes} files to {args.out}/")


if __name__ == "__main__":
    main()
