"""``fedbuff`` command line: ``fedbuff local`` runs a local federation with FedBuff;
``fedbuff resume`` continues a run folder from its checkpoint on a fresh local federation;
``fedbuff fairness`` compares tiers independent of the data with tier-correlated data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datetime import datetime, timezone

from fedbuff.launcher import LaunchError, LocalFederation, planned_tiers, resume_config, run_local, run_settings
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
    fairness = commands.add_parser(
        "fairness", help="FedBuff with tiers independent of the data vs tier-correlated data: "
                         "per-tier accuracy, participation and the largest gap of both")
    fairness.add_argument("--nodes", type=int, default=6, help="number of SuperNodes (default 6)")
    fairness.add_argument("--strength", type=float, default=100.0,
                          help="tier-strength of the tier-correlated run (default 100)")
    fairness.add_argument("--runs-dir", default="runs", help="where run folders are created (default runs/)")
    fairness.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app (default: this project)")
    fairness.add_argument("-c", "--run-config", action="append", default=[],
                          help="run-config overrides for both runs (repeatable)")
    args = parser.parse_args(argv)

    try:
        if args.command == "fairness":
            return _fairness(args, default_run_dir(args.runs_dir))
        if args.command == "resume":
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            run_config = resume_config(args.run_dir, args.run_config)
            federation = LocalFederation(
                app_dir=args.app_dir, run_dir=args.run_dir, num_nodes=args.nodes,
                tiers=_tiers(args.tiers, args.nodes, run_config), run_config=run_config,
                log_dir=args.run_dir / f"logs-resume-{stamp}",
            )
        else:
            run_config = " ".join(args.run_config)
            federation = LocalFederation(
                app_dir=args.app_dir, run_dir=default_run_dir(args.runs_dir), num_nodes=args.nodes,
                tiers=_tiers(args.tiers, args.nodes, run_config), run_config=run_config,
                simulation=args.simulation, secagg=args.secagg,
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
    parser.add_argument("--tiers", default="auto",
                        help="device tiers assigned round-robin to the nodes, e.g. low,mid,high ('real' "
                             "disables emulation); 'mix': the tier-mix quotas (tied to the data with "
                             "partitioner=tier-correlated); 'auto' (default): 'mix' for tier-correlated, "
                             "else low,mid,high")
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app (default: this project)")
    parser.add_argument("-c", "--run-config", action="append", default=[],
                        help="run-config overrides, e.g. -c 'max-server-steps=50 buffer-size=4' (repeatable)")


def _tiers(option: str, num_nodes: int, run_config: str) -> list[str]:
    """The nodes' tiers from ``--tiers`` (see its help); tier-correlated data needs ``mix``."""
    correlated = run_settings(run_config).partitioner == "tier-correlated"
    if option == "mix" or (option == "auto" and correlated):
        return planned_tiers(num_nodes, run_config)
    if correlated:
        raise LaunchError("partitioner=tier-correlated decides each node's tier: use --tiers mix (or auto)")
    return [t.strip() for t in ("low,mid,high" if option == "auto" else option).split(",") if t.strip()]


def _fairness(args: argparse.Namespace, out_dir: Path) -> int:
    from fedbuff.fairness import FairnessComparison, compare, report

    comparison = FairnessComparison(app_dir=args.app_dir, out_dir=out_dir, num_nodes=args.nodes,
                                    strength=args.strength, run_config=" ".join(args.run_config))
    results = compare(comparison)
    print(report(results, args.strength))
    print(f"run folders and fairness.json under {out_dir}")
    return 0


def print_summary(summary: dict[str, object]) -> None:
    """The end-of-run summary a person reads."""
    rows = [
        ("stopped because", summary["stop_reason"]),
        ("accuracy", f"{summary['initial_accuracy']:.3f} -> {summary['final_accuracy']:.3f}"),
        ("server steps", summary["server_steps"]),
        ("updates accepted / refused", f"{summary['updates_accepted']} / {summary['updates_refused']}"),
        ("accepted by tier", summary["accepted_by_tier"]),
        ("participation by tier", summary.get("participation_by_tier") or "n/a"),
        ("accuracy by tier", _rounded(summary.get("accuracy_by_tier")) or "n/a"),
        ("largest tier gap", "n/a" if summary.get("accuracy_gap") is None else f"{summary['accuracy_gap']:.3f}"),
        ("errors", summary["errors_by_reason"] or "none"),
        ("staleness mean / max", f"{summary['staleness_mean']:.2f} / {summary['staleness_max']}"),
        ("wall time", f"{summary['wall_seconds']:.1f}s"),
        ("run folder", summary["run_dir"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n=== fedbuff run summary ===")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _rounded(values: object) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()} if isinstance(values, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
