"""``fedbuff`` command line: ``fedbuff local`` runs a local federation with FedBuff;
``fedbuff resume`` continues a run folder from its checkpoint on a fresh local federation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datetime import datetime, timezone

from fedbuff.launcher import LaunchError, LocalFederation, resume_config, run_local
from server_app.records import default_run_dir

APP_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedbuff", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    local = commands.add_parser("local", help="run a local federation (SuperLink + SuperNodes) with FedBuff")
    _federation_options(local)
    local.add_argument("--simulation", action="store_true",
                       help="run the nodes as virtual SuperNodes in Flower's simulation engine (Ray)")
    local.add_argument("--secagg", action="store_true",
                       help="secure aggregation: start a mask service, give every node a signing key")
    local.add_argument("--runs-dir", default="runs", help="where run folders are created (default runs/)")
    resume = commands.add_parser(
        "resume", help="continue a run folder from its newest good checkpoint on a local federation")
    resume.add_argument("run_dir", type=Path, help="the run folder (runs/<timestamp>)")
    _federation_options(resume)
    args = parser.parse_args(argv)

    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    try:
        if args.command == "resume":
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            federation = LocalFederation(
                app_dir=args.app_dir, run_dir=args.run_dir, num_nodes=args.nodes, tiers=tiers,
                run_config=resume_config(args.run_dir, args.run_config),
                log_dir=args.run_dir / f"logs-resume-{stamp}",
            )
        else:
            federation = LocalFederation(
                app_dir=args.app_dir, run_dir=default_run_dir(args.runs_dir), num_nodes=args.nodes,
                tiers=tiers, run_config=" ".join(args.run_config), simulation=args.simulation,
                secagg=args.secagg,
            )
        summary = run_local(federation)
    except LaunchError as err:
        print(f"[fedbuff] error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[fedbuff] interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    print_summary(summary)
    return 0


def _federation_options(parser: argparse.ArgumentParser) -> None:
    """The options ``local`` and ``resume`` share: nodes, tiers, app, run-config overrides."""
    parser.add_argument("--nodes", type=int, default=6, help="number of SuperNodes (default 6)")
    parser.add_argument("--tiers", default="low,mid,high",
                        help="device tiers assigned round-robin to the nodes (default low,mid,high; "
                             "'real' disables emulation)")
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app (default: this project)")
    parser.add_argument("-c", "--run-config", action="append", default=[],
                        help="run-config overrides, e.g. -c 'max-server-steps=50 buffer-size=4' (repeatable)")


def print_summary(summary: dict[str, object]) -> None:
    """The end-of-run summary a person reads."""
    rows = [
        ("stopped because", summary["stop_reason"]),
        ("accuracy", f"{summary['initial_accuracy']:.3f} -> {summary['final_accuracy']:.3f}"),
        ("server steps", summary["server_steps"]),
        ("updates accepted / refused", f"{summary['updates_accepted']} / {summary['updates_refused']}"),
        ("accepted by tier", summary["accepted_by_tier"]),
        ("errors", summary["errors_by_reason"] or "none"),
        ("staleness mean / max", f"{summary['staleness_mean']:.2f} / {summary['staleness_max']}"),
        ("wall time", f"{summary['wall_seconds']:.1f}s"),
        ("run folder", summary["run_dir"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n=== fedbuff run summary ===")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
