"""One benchmark run of a real local federation, through the project's launcher.

The launcher (``fedbuff.launcher``) owns process management, FLWR_HOME and cleanup; this
only chooses quiet defaults for benchmarks and reads the run folder back.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.history import read_events
from fedbuff.launcher import LaunchError, LocalFederation, run_local

ROOT = Path(__file__).resolve().parents[1]
# No Prometheus port (other runs on the machine may hold it), no plots, no checkpoints:
# a benchmark measures training, not its outputs.
QUIET = "metrics-enabled=false write-plots=false checkpoint-every=0"


@dataclass(frozen=True)
class BenchRun:
    """What to start: nodes, tiers, run config; ``app_dir`` defaults to this project."""

    nodes: int
    config: str
    tiers: Sequence[str] = ("low", "mid", "high")
    simulation: bool = False
    app_dir: Path = ROOT
    label: str = ""


@dataclass(frozen=True)
class RunResult:
    """A finished run: its summary.json and every metrics.jsonl event."""

    summary: dict[str, object]
    events: list[dict[str, object]] = field(default_factory=list)
    load: float = 0.0  # 1-minute load average when the run started (the machine is shared)


def run(spec: BenchRun) -> RunResult:
    """Start the federation, wait for the run to finish, return what it wrote.

    The launcher's progress lines are swallowed; one line per run goes to stderr so a
    person watching ``make bench`` sees where it is. A failed run keeps its folder (logs).
    """
    print(f"[bench]   {spec.label or 'run'}: {spec.nodes} nodes, {spec.config}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="fedbuff-bench-"))
    run_dir = tmp / "run"
    try:
        summary = run_local(
            LocalFederation(app_dir=spec.app_dir, run_dir=run_dir, num_nodes=spec.nodes,
                            tiers=list(spec.tiers), run_config=f"{QUIET} {spec.config}",
                            simulation=spec.simulation),
            out=io.StringIO(),
        )
    except LaunchError:
        print(f"[bench]   failed; its logs are kept in {run_dir}/logs", file=sys.stderr, flush=True)
        raise
    except BaseException:  # interrupted: nothing worth keeping
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    history = run_dir / "metrics.jsonl"
    events = read_events(history) if history.exists() else []
    shutil.rmtree(tmp, ignore_errors=True)
    return RunResult(summary, events, load)
