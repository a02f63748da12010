"""``flwr-clientapp`` without the SuperNode daemon's imports: Flower's own command, loaded lean.

Flower's SuperExec starts one ``flwr-clientapp`` process per message, by name from ``PATH``.
The installed command imports the package ``flwr.supernode.cli``, whose ``__init__`` imports the
SuperNode daemon too (SQLAlchemy, Alembic, the object store): 0.8 s of CPU and 33 MB that a
ClientApp never uses. This entry point loads the very module that defines ``flwr-clientapp``
(``flwr/supernode/cli/flwr_clientapp.py``, its imports are absolute) without that package
``__init__``, and runs its ``flwr_clientapp()``: Flower's argument parsing, token handling and
runtime, unchanged. If the module is not where flwr 1.41 keeps it, Flower's own command runs.

The launcher puts a ``flwr-clientapp`` that runs :func:`main` first on its SuperNodes' ``PATH``
(``FEDBUFF_LEAN_CLIENTAPP=0`` keeps Flower's); docs/architecture.md says why.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

MODULE = "fedbuff._flwr_clientapp"  # the lean copy's name in sys.modules (never flwr's own name)


def flwr_clientapp_command() -> Callable[[], None]:
    """Flower's ``flwr_clientapp`` function, imported without ``flwr.supernode.cli``'s package init."""
    import flwr.supernode

    path = Path(flwr.supernode.__path__[0]) / "cli" / "flwr_clientapp.py"
    spec = importlib.util.spec_from_file_location(MODULE, path) if path.is_file() else None
    if spec is None or spec.loader is None:
        from flwr.supernode.cli import flwr_clientapp

        return flwr_clientapp
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    command: Callable[[], None] = module.flwr_clientapp
    return command


def main() -> None:
    """Run ``flwr-clientapp`` with this process's arguments."""
    sys.argv[0] = "flwr-clientapp"
    flwr_clientapp_command()()


if __name__ == "__main__":
    main()
