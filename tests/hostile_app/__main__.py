"""``flwr-clientapp`` with the hostile ClientApp in place of the one the run's FAB names.

Flower's runtime (``flwr.supernode.runtime.run_clientapp``) pulls the task from its SuperNode,
installs the run's FAB and loads the ClientApp the FAB's pyproject names
(``client_app.app:app``), taking the module from ``sys.modules`` when it is already there.
Registering :mod:`tests.hostile_app.client` under that name first is all it takes: the rest is
Flower's own process, talking to Flower's own SuperNode. A SuperNode started with a ``PATH``
whose ``flwr-clientapp`` runs ``python -m tests.hostile_app`` is a node that runs this app.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from tests.hostile_app import client

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module = config["tool"]["flwr"]["app"]["components"]["clientapp"].partition(":")[0]
    sys.modules[module] = client
    from flwr.supernode.cli import flwr_clientapp

    sys.argv[0] = "flwr-clientapp"
    flwr_clientapp()


if __name__ == "__main__":
    main()
