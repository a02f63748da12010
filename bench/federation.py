"""One benchmark run of a real local federation, through the project's launcher.

The launcher (``fedbuff_ops.launcher``) owns process management, FLWR_HOME and cleanup; this
only chooses quiet defaults for benchmarks and reads the run folder back.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.history import read_events
from bench.process_cost import ProcessCost, measured
from fedbuff_ops.launcher import USAGE_EXIT_CODE, LaunchError, LocalFederation, RunConfigError, run_local, run_settings

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
    measure: bool = False  # sample the process tree's CPU and memory (bench.process_cost)

    @property
    def run_config(self) -> str:
        """The run config the federation gets: the quiet defaults, then ``config``."""
        return f"{QUIET} {self.config}"


@dataclass(frozen=True)
class RunResult:
    """A finished run: its summary.json and every metrics.jsonl event."""

    summary: dict[str, object]
    events: list[dict[str, object]] = field(default_factory=list)
    load: float = 0.0  # 1-minute load average when the run started (the machine is shared)
    cost: ProcessCost | None = None  # with BenchRun.measure


def run(spec: BenchRun) -> RunResult:
    """Start the federation, wait for the run to finish, return what it wrote.

    The launcher's progress lines are swallowed; one line per run goes to stderr so a
    person watching ``make bench`` sees where it is. A failed run keeps its folder (logs).
    """
    print(f"[bench]   {spec.label or 'run'}: {spec.nodes} nodes, {spec.config}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="fedbuff-bench-"))
    run_dir = tmp / "run"
    federation = LocalFederation(
        app_dir=spec.app_dir,
        run_dir=run_dir,
        num_nodes=spec.nodes,
        tiers=list(spec.tiers),
        run_config=spec.run_config,
        simulation=spec.simulation,
    )
    cost = None
    try:
        if spec.measure:
            with measured(run_dir / "metrics.jsonl", spec.nodes) as cost:
                summary = run_local(federation, out=io.StringIO())
        else:
            summary = run_local(federation, out=io.StringIO())
    except LaunchError:
        print(f"[bench]   failed; its logs are kept in {run_dir}/logs", file=sys.stderr, flush=True)
        raise
    except BaseException:  # interrupted: nothing worth keeping
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    history = run_dir / "metrics.jsonl"
    events = read_events(history) if history.exists() else []
    shutil.rmtree(tmp, ignore_errors=True)
    return RunResult(summary, events, load, cost)


def check_configs(configs: Iterable[str], prog: str = "bench") -> None:
    """Refuse a run config this app cannot run before the first federation starts (a suite
    that fails an hour in has lost the hour): one line on stderr, exit code 2."""
    try:
        for config in configs:
            run_settings(config)
    except RunConfigError as err:
        print(f"[{prog}] error: {err}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE) from None
