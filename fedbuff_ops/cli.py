"""``fedbuff`` command line: ``fedbuff local`` runs a local federation with FedBuff;
``fedbuff resume`` continues a run folder from its checkpoint on a fresh local federation, the
same one the run was started on (its ``federation.json``); ``fedbuff fairness`` compares tiers
independent of the data with tier-correlated data; ``fedbuff new NAME`` writes a new Flower app
whose task (model and data loader, ``task.py``) is the user's, trained by this engine.

Exit codes: 0 done; 1 the federation or the run failed; 2 the command line or its run
config (``-c``) cannot work, said in one line before anything is started; 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from fedbuff_ops.federation_record import FederationRecord, FederationRecordError
from fedbuff_ops.launcher import (
    USAGE_EXIT_CODE,
    LaunchError,
    LocalFederation,
    RunConfigError,
    format_run_config,
    parse_run_config,
    planned_tiers,
    resume_config,
    run_local,
    run_settings,
    task_tiers,
    with_node_config,
)
from server_app.records import default_run_dir

APP_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedbuff", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    local = commands.add_parser("local", help="run a local federation (SuperLink + SuperNodes) with FedBuff")
    _federation_options(local)
    local.add_argument(
        "--simulation",
        action="store_true",
        help="run the nodes as virtual SuperNodes in Flower's simulation engine (Ray)",
    )
    local.add_argument(
        "--secagg", action="store_true", help="secure aggregation: start a mask service, give every node a signing key"
    )
    local.add_argument("--runs-dir", default="runs", help="where run folders are created (default runs/)")
    local.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="extra node config for every SuperNode, e.g. --node-config 'data-path=\"data/node-{partition-id}.npz\"': "
        "{partition-id} and {num-partitions} are replaced by each node's; the value of a key ending in path, "
        "-dir or -file is made absolute against the current directory (TOML values; repeatable)",
    )
    resume = commands.add_parser(
        "resume", help="continue a run folder from its newest good checkpoint on a local federation"
    )
    resume.add_argument("run_dir", type=Path, help="the run folder (runs/<timestamp>)")
    _federation_options(resume, nodes=None, tiers=None, recorded=True)
    resume.add_argument(
        "--new-federation",
        action="store_true",
        help="resume on the federation --nodes / --tiers describe even though it differs from "
        "the one the run was started on (every node then holds another partition)",
    )
    new = commands.add_parser(
        "new", help="write a new Flower app (NAME/) whose task.py is yours: a CNN and a loader of each node's file"
    )
    new.add_argument("name", help="the app's name and folder: a letter, then letters, digits and '-'")
    new.add_argument("--dir", type=Path, default=Path(), help="where to create NAME/ (default: here)")
    fairness = commands.add_parser(
        "fairness",
        help="FedBuff with tiers independent of the data vs tier-correlated data: "
        "per-tier accuracy, participation and the largest gap of both",
    )
    fairness.add_argument("--nodes", type=int, default=6, help="number of SuperNodes (default 6)")
    fairness.add_argument(
        "--strength", type=float, default=100.0, help="tier-strength of the tier-correlated run (default 100)"
    )
    fairness.add_argument("--runs-dir", default="runs", help="where run folders are created (default runs/)")
    fairness.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app (default: this project)")
    fairness.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides for both runs (repeatable; a later -c wins)",
    )
    args = parser.parse_args(argv)

    if args.command == "new":
        return _new(args.name, args.dir)
    try:
        if args.command == "fairness":
            return _fairness(args, default_run_dir(args.runs_dir))
        if args.command == "resume":
            federation = resume_federation(
                args.run_dir,
                args.run_config,
                args.app_dir,
                nodes=args.nodes,
                tiers=args.tiers,
                new_federation=args.new_federation,
            )
        else:
            run_config = format_run_config(parse_run_config(args.run_config))
            federation = LocalFederation(
                app_dir=args.app_dir,
                run_dir=default_run_dir(args.runs_dir),
                num_nodes=args.nodes,
                tiers=_tiers(args.tiers, args.nodes, run_config, args.app_dir),
                run_config=run_config,
                node_overrides=with_node_config({}, " ".join(args.node_config), args.nodes),
                simulation=args.simulation,
                secagg=args.secagg,
            )
        summary = run_local(federation)
    except RunConfigError as err:
        print(f"[fedbuff] error: {err}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except LaunchError as err:
        print(f"[fedbuff] error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[fedbuff] interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    print_summary(summary)
    return 0


def _new(name: str, parent: Path) -> int:
    from fedbuff_ops.scaffold import ScaffoldError, new_app

    try:
        app = new_app(name, parent)
    except ScaffoldError as err:
        print(f"[fedbuff] error: {err}", file=sys.stderr)
        return USAGE_EXIT_CODE
    print(f"wrote the Flower app {app}/ (task.py is yours: the model and each node's data). Try it:")
    print(f"  cd {app} && python make_data.py --nodes 3")
    print("  fedbuff local --app-dir . --nodes 3 --tiers real \\")
    print("      --node-config 'data-path=\"data/node-{partition-id}.npz\"'")
    return 0


def _federation_options(
    parser: argparse.ArgumentParser, nodes: int | None = 6, tiers: str | None = "auto", recorded: bool = False
) -> None:
    """The options ``local`` and ``resume`` share: nodes, tiers, app, run-config overrides.

    ``resume`` defaults ``--nodes`` and ``--tiers`` to what the run folder recorded."""
    default = "the run's own, from its federation.json" if recorded else None
    parser.add_argument("--nodes", type=int, default=nodes, help=f"number of SuperNodes (default {default or nodes})")
    parser.add_argument(
        "--tiers",
        default=tiers,
        help="device tiers assigned round-robin to the nodes, e.g. low,mid,high ('real' "
        "disables emulation); 'mix': the tier-mix quotas (tied to the data with "
        "partitioner=tier-correlated); 'auto': 'mix' for tier-correlated, else "
        f"low,mid,high (default {default or tiers})",
    )
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app (default: this project)")
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides, e.g. -c 'max-server-steps=50 strategy=\"sync\"' (TOML values: "
        "strings in double quotes; repeatable, a later -c wins)",
    )


def resume_federation(
    run_dir: Path,
    overrides: list[str],
    app_dir: Path,
    nodes: int | None = None,
    tiers: str | None = None,
    new_federation: bool = False,
) -> LocalFederation:
    """The federation that resumes ``run_dir``: the one it recorded, unless ``nodes`` / ``tiers`` ask
    for another, which is refused, saying what differs, unless ``new_federation``."""
    try:
        recorded = FederationRecord.read(run_dir)
    except FederationRecordError as err:
        raise LaunchError(str(err)) from err
    secagg = recorded is not None and recorded.secagg
    run_config = resume_config(run_dir, overrides, launcher_owned=("secagg-address",) if secagg else ())
    if recorded is not None and nodes is None and tiers is None:
        record = recorded
    else:
        count = nodes if nodes is not None else (recorded.num_nodes if recorded else 6)
        chosen = _tiers(tiers or "auto", count, run_config, app_dir)
        node_tiers = tuple(chosen[i % len(chosen)] for i in range(count))
        kept = {i: extra for i, extra in (recorded.node_overrides.items() if recorded else ()) if i < count}
        record = FederationRecord(node_tiers, kept, recorded.simulation if recorded else False, secagg)
    if recorded is None and not new_federation:
        raise LaunchError(
            f"{run_dir} records no federation (no federation.json: started before resume checked "
            "it); to resume anyway give the original --nodes and --tiers and --new-federation"
        )
    if recorded is not None and (changes := recorded.differences(record)) and not new_federation:
        raise LaunchError(
            f"{run_dir} was trained on another federation; this resume would change: "
            f"{'; '.join(changes)}. Leave out --nodes/--tiers to resume on the same one, "
            "or pass --new-federation to change it anyway"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return LocalFederation.of_record(
        record, app_dir=app_dir, run_dir=run_dir, run_config=run_config, log_dir=run_dir / f"logs-resume-{stamp}"
    )


def _tiers(option: str, num_nodes: int, run_config: str, app_dir: Path) -> list[str]:
    """The nodes' tiers from ``--tiers`` (see its help); a task that ties tiers to its data
    (partitioner=tier-correlated) needs ``mix``."""
    tied = task_tiers(num_nodes, run_config, app_dir)
    if option == "mix" or (option == "auto" and tied is not None):
        return tied if tied is not None else planned_tiers(num_nodes, run_config, app_dir)
    if tied is not None:
        raise LaunchError("partitioner=tier-correlated decides each node's tier: use --tiers mix (or auto)")
    return [t.strip() for t in ("low,mid,high" if option == "auto" else option).split(",") if t.strip()]


def _fairness(args: argparse.Namespace, out_dir: Path) -> int:
    from fedbuff_ops.fairness import RUNS, FairnessComparison, compare, report

    overrides = format_run_config(parse_run_config(args.run_config))
    comparison = FairnessComparison(
        app_dir=args.app_dir, out_dir=out_dir, num_nodes=args.nodes, strength=args.strength, run_config=overrides
    )
    for run in RUNS:  # both runs' settings, before the first one starts
        run_settings(comparison.config(run))
    results = compare(comparison)
    print(report(results, args.strength))
    print(f"run folders and fairness.json under {out_dir}")
    return 0


def print_summary(summary: dict[str, object]) -> None:
    """The end-of-run summary a person reads."""
    rows = [
        ("stopped because", summary["stop_reason"]),
        *_metric_rows(summary),
        ("server steps", summary["server_steps"]),
        ("updates accepted / refused", f"{summary['updates_accepted']} / {summary['updates_refused']}"),
        ("accepted by tier", summary["accepted_by_tier"]),
        ("participation by tier", summary.get("participation_by_tier") or "n/a"),
        ("accuracy by tier", _rounded(summary.get("accuracy_by_tier")) or "n/a"),
        ("largest tier gap", "n/a" if summary.get("accuracy_gap") is None else f"{summary['accuracy_gap']:.3f}"),
        ("errors", summary["errors_by_reason"] or "none"),
        ("fields dropped / clipped", f"{summary.get('dropped_fields') or 'none'} / {summary.get('clipped') or 'none'}"),
        ("steps refused (guard)", summary.get("refused_steps") or "none"),
        ("staleness mean / max", f"{summary['staleness_mean']:.2f} / {summary['staleness_max']}"),
        ("wall time", f"{summary['wall_seconds']:.1f}s"),
        ("run folder", summary["run_dir"]),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n=== fedbuff run summary ===")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _metric_rows(summary: dict[str, object]) -> list[tuple[str, object]]:
    """One row per metric of the central evaluation, first -> last (the task's metrics, e.g.
    accuracy and loss), then one per metric of the last federated evaluation (the nodes' own
    held-out data); one row saying there was neither when nothing was evaluated."""
    first, last = summary.get("initial_metrics"), summary.get("final_metrics")
    if not isinstance(last, dict) or not isinstance(first, dict):  # a summary of an older run
        first, last = {"accuracy": summary.get("initial_accuracy")}, {"accuracy": summary.get("final_accuracy")}
    rows: list[tuple[str, object]] = [
        (name, f"{_number(first.get(name))} -> {_number(value)}") for name, value in last.items() if value is not None
    ]
    federated = summary.get("final_federated_metrics")
    if isinstance(federated, dict):
        rows += [(f"federated {name}", _number(value)) for name, value in federated.items()]
    return rows or [("evaluation", "none (the server holds no data and federated-eval is off)")]


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def _rounded(values: object) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()} if isinstance(values, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
