"""Load: many SuperNodes held for minutes, with nothing lost.

A real local federation of ``--nodes`` SuperNodes (default 50) runs FedBuff for ``--minutes``
(default 10), then the same with ``--compare-nodes`` (default 6) for comparison. While it runs,
a sampler reads every ``SAMPLE_SECONDS``: the ServerApp's RSS, the SuperLink's ``/health``, the
Prometheus exporter's series count and whether any series is labelled by node, and the memory of
every process the run started. After it, the run's events are balanced: every dispatched task
must have ended as an update, a refusal, a counted error, or be in flight at the stop (``stop``
event) — none lost.

Per-message ClientApps (``warm-trainer=false``): a warm trainer holds ~470 MB, and 50 of them do
not fit next to 50 SuperNodes in this machine's 24 GiB (the limit is written down with the
figures). All tiers are ``high``; one local step per update.

Run: .venv/bin/python -m bench.load [--quick] [--nodes 50] [--minutes 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.federation import ROOT
from bench.history import read_events
from bench.process_cost import marked
from bench.report import markdown_table
from fedbuff_ops.launcher import LocalFederation, free_port, start_federation
from server_app.events import EventKind

SAMPLE_SECONDS = 5.0
REPLY_EVENTS = (EventKind.UPDATE, EventKind.INVALID, EventKind.ERROR)
RSS_GROWTH_GOAL = 1.2  # the ServerApp's RSS over the last third vs the first third (after start-up)


@dataclass
class Samples:
    """What the sampler saw while one run went."""

    serverapp_rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)
    total_rss_mb: list[float] = field(default_factory=list)  # every process of the run
    health_ok: int = 0
    health_failed: int = 0
    series: list[int] = field(default_factory=list)
    node_labelled: bool = False


@dataclass(frozen=True)
class LoadResult:
    """One load run: its size, what it did and what the sampler saw."""

    nodes: int
    minutes: float
    summary: dict[str, object]
    events: list[dict[str, object]]
    samples: Samples

    @property
    def dispatched(self) -> int:
        return sum(1 for e in self.events if e.get("event") == EventKind.DISPATCH)

    @property
    def replies(self) -> Counter[str]:
        return Counter(str(e["event"]) for e in self.events if e.get("event") in REPLY_EVENTS)

    @property
    def in_flight_at_stop(self) -> int:
        stops = [e for e in self.events if e.get("event") == EventKind.STOP]
        return int(stops[-1]["in_flight"]) if stops else 0  # type: ignore[call-overload]

    @property
    def lost(self) -> int:
        """Dispatched tasks that neither came back nor were in flight at the stop."""
        return self.dispatched - sum(self.replies.values()) - self.in_flight_at_stop

    @property
    def accepted_per_minute(self) -> float:
        return float(self.summary.get("updates_accepted", 0)) / self.minutes  # type: ignore[arg-type]

    def rss_growth(self) -> float | None:
        """The ServerApp's median RSS over the last third of the run ÷ over its first third."""
        values = [mb for _, mb in self.samples.serverapp_rss_mb]
        third = len(values) // 3
        if third < 2:
            return None
        return statistics.median(values[-third:]) / statistics.median(values[:third])


def _processes(marker: bytes) -> list[tuple[Path, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append((entry, (entry / "cmdline").read_bytes()))
            except OSError:
                continue
    return found


def _rss_mb(entry: Path) -> float:
    try:
        for line in (entry / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def sample(samples: Samples, marker: bytes, started: float, superlink_port: int, metrics_port: int) -> None:
    """One reading of memory, the SuperLink's health and the exporter's series."""
    processes = _processes(marker)
    samples.total_rss_mb.append(sum(_rss_mb(entry) for entry, _ in processes))
    for entry, cmdline in processes:
        if b"flwr-serverapp" in cmdline:
            samples.serverapp_rss_mb.append((time.monotonic() - started, _rss_mb(entry)))
    if _get(f"http://127.0.0.1:{superlink_port}/health") is None:
        samples.health_failed += 1
    else:
        samples.health_ok += 1
    text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    if text is not None:
        series = [line for line in text.splitlines() if line and not line.startswith("#")]
        samples.series.append(len(series))
        samples.node_labelled |= any('node="' in line or 'node_id="' in line for line in series)


def load_run(nodes: int, minutes: float, concurrency: int) -> LoadResult:
    """One federation of ``nodes`` SuperNodes training for ``minutes``, sampled throughout."""
    print(
        f"[bench]   load: {nodes} SuperNodes, {minutes:g} min, concurrency {concurrency}", file=sys.stderr, flush=True
    )
    metrics_port = free_port()
    config = (
        f'strategy="fedbuff" concurrency={concurrency} buffer-size=3 max-server-steps=1000000 '
        f"max-wall-seconds={minutes * 60:g} eval-every=20 local-steps=1 warm-trainer=false "
        f"write-plots=false checkpoint-every=0 metrics-port={metrics_port}"
    )
    with tempfile.TemporaryDirectory(prefix="fedbuff-load-") as tmp, marked() as marker:
        run_dir = Path(tmp) / "run"
        federation = LocalFederation(app_dir=ROOT, run_dir=run_dir, num_nodes=nodes, tiers=["high"], run_config=config)
        samples, stop = Samples(), threading.Event()
        with start_federation(federation, out=io.StringIO()) as running:
            started = time.monotonic()

            def sampler() -> None:
                while not stop.wait(SAMPLE_SECONDS):
                    sample(samples, marker, started, running.port, metrics_port)

            thread = threading.Thread(target=sampler, name="load-sampler", daemon=True)
            thread.start()
            try:
                with open(run_dir / "flwr-run.log", "w") as log:
                    subprocess.run(
                        running.run_argv(),
                        env=running.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        check=False,
                        timeout=minutes * 60 + 600,
                    )
            finally:
                stop.set()
                thread.join()
        summary = json.loads((run_dir / "summary.json").read_text())
        events = read_events(run_dir / "metrics.jsonl")
    return LoadResult(nodes, minutes, summary, events, samples)


def report(results: list[LoadResult]) -> str:
    """The table and the verdicts of the runs."""
    rows = []
    for r in results:
        rss = [mb for _, mb in r.samples.serverapp_rss_mb]
        growth = r.rss_growth()
        errors = r.summary.get("errors_by_reason") or {}
        rows.append(
            [
                r.nodes,
                f"{r.minutes:g} min",
                r.dispatched,
                r.summary.get("updates_accepted"),
                sum((r.summary.get("rejected_by_reason") or {}).values()),  # type: ignore[union-attr]
                ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "0",  # type: ignore[union-attr]
                r.in_flight_at_stop,
                r.lost,
                f"{r.accepted_per_minute:.1f}",
                f"{min(rss):.0f}–{max(rss):.0f} MB" if rss else "–",
                f"{growth:.2f}×" if growth else "–",
                f"{max(r.samples.total_rss_mb) / 1024:.1f} GiB" if r.samples.total_rss_mb else "–",
                f"{r.samples.health_ok}/{r.samples.health_ok + r.samples.health_failed}",
                f"{max(r.samples.series)}" if r.samples.series else "–",
            ]
        )
    table = markdown_table(
        [
            "SuperNodes",
            "length",
            "tasks dispatched",
            "accepted",
            "refused",
            "errors",
            "in flight at stop",
            "lost",
            "accepted / min",
            "ServerApp RSS",
            "RSS last ÷ first third",
            "all processes' RSS (peak)",
            "SuperLink /health ok",
            "exporter series (max)",
        ],
        rows,
    )
    big = results[0]
    lines = [table, ""]
    lines.append(
        f"- Nothing lost: {'met' if all(r.lost == 0 for r in results) else 'missed'} "
        f"({', '.join(f'{r.nodes} nodes: {r.lost}' for r in results)} tasks unaccounted for)."
    )
    growth = big.rss_growth()
    lines.append(
        f"- ServerApp RSS flat at {big.nodes} nodes (last third ≤ {RSS_GROWTH_GOAL:g}× the first): "
        + (
            "not enough samples"
            if growth is None
            else f"{growth:.2f}× — {'met' if growth <= RSS_GROWTH_GOAL else 'missed'}"
        )
        + "."
    )
    lines.append(
        f"- SuperLink `/health` answered {big.samples.health_ok} of "
        f"{big.samples.health_ok + big.samples.health_failed} probes at {big.nodes} nodes."
    )
    lines.append(
        f"- Exporter series bounded (no node label): "
        f"{'missed' if any(r.samples.node_labelled for r in results) else 'met'}; "
        f"{', '.join(f'{r.nodes} nodes: {max(r.samples.series) if r.samples.series else 0}' for r in results)}"
        " series."
    )
    if len(results) > 1 and results[1].accepted_per_minute:
        small = results[1]
        lines.append(
            f"- Accepted updates per minute: {big.accepted_per_minute:.1f} with {big.nodes} SuperNodes "
            f"against {small.accepted_per_minute:.1f} with {small.nodes} "
            f"({big.accepted_per_minute / small.accepted_per_minute:.2f}×)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 SuperNodes for 2 minutes against 3 for 1")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=20, help="tasks in flight (at most one per node)")
    parser.add_argument("--compare-nodes", type=int, default=6)
    parser.add_argument("--compare-minutes", type=float, default=3.0)
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.minutes, args.compare_nodes, args.compare_minutes = 12, 2.0, 3, 1.0
    load = os.getloadavg()[0]
    results = [
        load_run(args.nodes, args.minutes, min(args.concurrency, args.nodes)),
        load_run(args.compare_nodes, args.compare_minutes, min(args.concurrency, args.compare_nodes)),
    ]
    print(
        f"FedBuff (K = 3), all tiers `high`, one local step per update, per-message ClientApps "
        f"(`warm-trainer=false`), concurrency {min(args.concurrency, args.nodes)} (at most one task per node); "
        f"sampled every {SAMPLE_SECONDS:g} s. Load average at the start: {load:.1f}.\n"
    )
    print(report(results))


if __name__ == "__main__":
    main()
