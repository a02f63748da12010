"""ServerApp entry point: settings, data, model, strategy, the loop, the run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedbuff.settings import RunSettings, SettingsError
from server_app.checkpoint import CheckpointError, CheckpointWriter, ServerState, load_latest, snapshot
from server_app.clock import Clock, VirtualClock
from server_app.events import EventKind, EventSink, Fanout
from server_app.loop import AsyncLoop, RunResult, Target
from server_app.metrics import MetricsConfig, MetricsExporter
from server_app.records import RunRecorder, default_run_dir
from server_app.stats import largest_gap
from server_app.validation import num_examples_limit
from strategies import build_strategy
from strategies.registry import spec_of

if TYPE_CHECKING:
    from torch import nn

    from fedbuff.task import CentralData, Task
    from server_app.evaluation import CentralEvaluator
    from server_app.federated_eval import FederatedEvaluator
    from server_app.privacy import PrivacyBudget

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train with the configured strategy until a stop condition, then write the summary."""
    _configure_logging()
    try:
        settings = RunSettings.from_run_config(context.run_config)
    except SettingsError as err:
        log.error("invalid run config: %s", err)
        raise
    from fedbuff.model import get_weights
    from server_app.evaluation import CentralEvaluator, TierHoldout

    task, model, central, target = _task(settings, context)
    resumed = _load_checkpoint(settings)
    if resumed is not None:  # the checkpoint's model replaces these weights
        initial, start = get_weights(model), f"resumed from {settings.resume_from}"
    else:
        initial, start = _initial_weights(settings, task, model, central)
    holdout = TierHoldout(central)
    evaluator = CentralEvaluator(task, model, central, holdout)

    if resumed is not None:
        run_dir = settings.resume_dir()
    else:
        run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir()
        _refuse_used_run_dir(run_dir)
    recorder = RunRecorder(run_dir)
    # the whole run config: the engine's settings and the task's own knobs (a resume needs both)
    recorder.write_config({**dict(context.run_config), **settings.as_dict()})
    log.info(
        "%s on %s (%s): concurrency %d, buffer %d, max %d server steps; start: %s; run folder %s",
        settings.strategy,
        task.name,
        "central evaluation" if central is not None else "no central data",
        settings.concurrency,
        settings.buffer_size,
        settings.max_server_steps,
        start,
        run_dir.resolve(),
    )
    exporter = _start_exporter(settings)
    events = Fanout([holdout, recorder, *filter(None, [exporter])])
    started = time.monotonic()
    budget = _privacy_budget(settings, events, started)
    checkpoints = CheckpointWriter(run_dir)
    try:
        if resumed is not None:
            _resume(settings, resumed, budget, events)
        # a node holds at most what the task says one can: no honest client claims more
        max_examples = num_examples_limit(settings.max_num_examples, central.max_examples if central else None)
        clock = _clock(grid, settings, task, initial)
        federated = _federated(grid, settings, task, central, max_examples)
        result = _train(
            grid,
            settings,
            context.run_id,
            initial,
            evaluator,
            events,
            budget,
            resumed,
            checkpoints,
            max_examples,
            clock,
            target,
            federated,
        )
        summary = _summary(settings, result, time.monotonic() - started, run_dir)
        if federated is not None:
            summary["federated_eval_failed"] = dict(federated.failures)
        summary["initial_model"] = start
        if budget is not None:
            summary["user_dp_epsilon"] = budget.accountant.epsilon()
            summary["user_dp_delta"] = settings.user_dp_delta
        recorder.write_summary(summary)
    finally:
        recorder.close()
        if exporter is not None:
            exporter.close()
    if settings.write_plots:
        _write_plots(run_dir)
    _log_summary(result, summary)


def _task(settings: RunSettings, context: Context) -> tuple[Task, nn.Module, CentralData | None, Target | None]:
    """The run's task, its seeded model and the data the server may hold; a task that cannot
    work (it fails to import, builds no model, or DP-SGD cannot train its model) stops the run
    before any node trains, in one line."""
    from fedbuff.task import TaskError, load_task
    from fedbuff.training import build_model, check_dp_compatible

    try:
        task = load_task(settings.task, context.run_config)
        model = build_model(task, settings.seed)
        if settings.dp_sgd:
            check_dp_compatible(model)
        central = task.central_data()
        target = Target.of(settings, task.metrics)
        if target is not None and central is None and not settings.federated_eval_on(False):
            raise TaskError(
                f"{task.name}: {target.knob} needs an evaluation: the task gives the server no data "
                "and federated-eval is off"
            )
    except (TaskError, SettingsError) as err:
        log.error("invalid task: %s", err)
        raise
    return task, model, central, target


def _initial_weights(
    settings: RunSettings, task: Task, model: nn.Module, central: CentralData | None
) -> tuple[list[np.ndarray], str]:
    """The fresh run's starting model (random, pre-trained or warmed up) and how it was made."""
    from server_app.pretrain import initial_weights

    try:
        return initial_weights(settings, model, central, task)
    except SettingsError as err:
        log.error("invalid run config: %s", err)
        raise


def _refuse_used_run_dir(run_dir: Path) -> None:
    """A fresh run never appends to another run's history: two runs in one metrics.jsonl read as one."""
    history = run_dir / "metrics.jsonl"
    if history.is_file() and history.stat().st_size > 0:
        err = SettingsError(
            f"run-dir {run_dir} already holds a run ({history.name}): give a new run-dir, or resume-from it"
        )
        log.error("invalid run config: %s", err)
        raise err


def _log_summary(result: RunResult, summary: dict[str, object]) -> None:
    log.info(
        "SUMMARY | %s | %s -> %s | %d server steps | updates accepted %d, refused %d | "
        "staleness mean %.2f max %d | %.1fs",
        result.reason,
        result.evaluations[0].describe(),
        result.evaluations[-1].describe(),
        result.version,
        result.stats.accepted,
        result.stats.refused,
        result.stats.staleness_mean(),
        result.stats.staleness_max(),
        summary["wall_seconds"],
    )


def _train(
    grid: Grid,
    settings: RunSettings,
    run_id: int,
    initial: list[np.ndarray],
    evaluate: CentralEvaluator,
    events: EventSink,
    budget: PrivacyBudget | None,
    resumed: ServerState | None,
    checkpoints: CheckpointWriter,
    max_examples: int,
    clock: Clock | None = None,
    target: Target | None = None,
    federated: FederatedEvaluator | None = None,
) -> RunResult:
    """Run the chosen strategy, checkpointing on the cadence and at the end. A reply claiming
    more than ``max_examples`` examples is refused; ``clock`` is the loop's (default: wall)."""
    if spec_of(settings.strategy).run_by_flower:
        from server_app.flower_fedavg import run_flower_fedavg

        result = run_flower_fedavg(grid, settings, initial, evaluate, events, max_examples, target, federated)
        checkpoints.write(
            ServerState(
                result.model, result.version, settings.strategy, stats=result.stats, evaluations=result.evaluations
            )
        )
        return result

    def save(loop: AsyncLoop) -> None:
        """A failed write (disk full) costs this checkpoint, never the run: the last good one stays."""
        accountant = budget.accountant.state_dict() if budget is not None else None
        try:
            checkpoints.write(snapshot(loop, settings.strategy, accountant))
        except OSError:
            log.exception("checkpoint at version %d not written", loop.strategy.version)

    def on_step(loop: AsyncLoop) -> None:
        if settings.checkpoint_every and loop.strategy.version % settings.checkpoint_every == 0:
            save(loop)

    privacy = None
    if budget is not None:
        from strategies.dp import FlushPrivacy

        privacy = FlushPrivacy(settings, settings.dp_k_min, budget.release)
    stop_when = budget.stop_reason if budget is not None else None
    secure = None
    if settings.secagg:
        from server_app import secagg

        secure = secagg.connect(settings, run_id, initial, privacy, max_examples)
        loop = AsyncLoop(
            grid,
            secure.strategy,
            settings,
            evaluate,
            events,
            validate=secure.validate,
            task_config=secure.task_config,
            stop_when=stop_when,
            on_step=on_step,
            evaluate_tiers=evaluate.accuracy_by_tier,
            clock=clock,
            target=target,
            federated=federated,
        )
    else:
        strategy = build_strategy(settings, initial, settings.concurrency, privacy)
        loop = AsyncLoop(
            grid,
            strategy,
            settings,
            evaluate,
            events,
            stop_when=stop_when,
            on_step=on_step,
            evaluate_tiers=evaluate.accuracy_by_tier,
            max_num_examples=max_examples,
            clock=clock,
            target=target,
            federated=federated,
        )
    _continue(loop, resumed)
    try:
        reason = loop.run()
    finally:
        # Also on SIGTERM or `flwr stop` (Flower exits through SystemExit) and on an error:
        # the state after the last server step is on disk.
        save(loop)
        if secure is not None:
            secure.client.close()
    virtual = loop.clock.now() if isinstance(loop.clock, VirtualClock) else None
    return RunResult(reason, loop.evaluations, loop.stats, loop.strategy.model, loop.strategy.version, virtual)


def _federated(
    grid: Grid, settings: RunSettings, task: Task, central: CentralData | None, max_examples: int
) -> FederatedEvaluator | None:
    """Federated evaluation, when ``federated-eval`` asks for it (``auto``: the server holds no data)."""
    if not settings.federated_eval_on(central is not None):
        return None
    from server_app.federated_eval import FederatedEvaluator

    return FederatedEvaluator(
        grid, task.metrics, settings.federated_eval_fraction, settings.task_ttl_seconds, max_examples
    )


def _clock(grid: Grid, settings: RunSettings, task: Task, initial: list[np.ndarray]) -> Clock | None:
    """The virtual clock when ``virtual-clock`` is on (it asks every node its partition once)."""
    if not settings.virtual_clock:
        return None
    from server_app.virtual import VirtualClockError, virtual_clock

    try:
        return virtual_clock(grid, settings, task, initial)
    except VirtualClockError as err:
        log.error("%s", err)
        raise


def _load_checkpoint(settings: RunSettings) -> ServerState | None:
    """The checkpoint ``resume-from`` names (newest good one, else the previous), or None."""
    if not settings.resume_from:
        return None
    try:
        state, path = load_latest(Path(settings.resume_from))
        if state.strategy != settings.strategy:
            raise CheckpointError(
                f"{path} is a checkpoint of strategy {state.strategy!r}, this run's is {settings.strategy!r}"
            )
        if (state.accountant is not None) != settings.user_dp:
            raise CheckpointError(
                f"{path}: user-dp must be {state.accountant is not None} as in the "
                "checkpointed run (ε would not add up otherwise)"
            )
    except CheckpointError as err:
        log.error("cannot resume: %s", err)
        raise
    return state


def _resume(settings: RunSettings, state: ServerState, budget: PrivacyBudget | None, events: EventSink) -> None:
    """Continue ε where the checkpoint left it, and record the resume in the run history."""
    if budget is not None:
        try:
            budget.accountant.load_state_dict(state.accountant)  # type: ignore[arg-type]
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{settings.resume_from}: user-DP accountant state: {err}") from err
        events.event(EventKind.PRIVACY, epsilon=budget.accountant.epsilon(), delta=settings.user_dp_delta, time=0.0)
    log.info(
        "resuming at version %d; dropped %d buffered update(s) and %d task(s) in flight",
        state.version,
        state.buffer_fill,
        state.in_flight,
    )
    events.event(
        EventKind.RESUME,
        time=0.0,
        version=state.version,
        accepted=state.stats.accepted,
        discarded_buffered=state.buffer_fill,
        abandoned_in_flight=state.in_flight,
    )


def _continue(loop: AsyncLoop, resumed: ServerState | None) -> None:
    """Hand a fresh loop the checkpoint's model, version, optimizer state and counters."""
    if resumed is None:
        return
    loop.strategy.load_state_dict({"model": resumed.model, "version": resumed.version, "optimizer": resumed.optimizer})
    loop.stats = resumed.stats
    loop.evaluations = list(resumed.evaluations)


def _privacy_budget(settings: RunSettings, events: EventSink, started: float) -> PrivacyBudget | None:
    """User-level DP accounting (Opacus' RDP accountant), publishing ε after each flush."""
    if not settings.user_dp:
        return None
    from server_app.privacy import PrivacyBudget

    def publish(epsilon: float) -> None:
        events.event(
            EventKind.PRIVACY, epsilon=epsilon, delta=settings.user_dp_delta, time=round(time.monotonic() - started, 3)
        )

    return PrivacyBudget(
        settings.user_dp_noise_multiplier, settings.user_dp_delta, settings.user_dp_epsilon_budget, publish
    )


def _start_exporter(settings: RunSettings) -> MetricsExporter | None:
    """The Prometheus endpoint; a port in use costs the metrics, never the run."""
    if not settings.metrics_enabled:
        return None
    exporter = MetricsExporter(
        MetricsConfig(
            address=settings.metrics_address,
            port=settings.metrics_port,
            straggler_deadline_seconds=settings.straggler_deadline_seconds,
        )
    )
    exporter.describe_run(
        buffer_size=settings.buffer_size, max_staleness=settings.max_staleness, concurrency=settings.concurrency
    )
    try:
        log.info("metrics at %s", exporter.start())
    except OSError as err:
        log.warning("metrics endpoint unavailable (%s); training goes on without it", err)
        return None
    return exporter


def _write_plots(run_dir: Path) -> None:
    """PNG plots of the finished run; a plotting failure never fails a finished run."""
    from server_app.plots import write_plots

    try:
        write_plots(run_dir)
    except Exception:  # the run's results are already on disk
        log.exception("plotting failed")


def _summary(settings: RunSettings, result: RunResult, wall_seconds: float, run_dir: Path) -> dict[str, object]:
    first, last = result.evaluations[0], result.evaluations[-1]
    return {
        "stop_reason": result.reason,
        "strategy": settings.strategy,
        "server_steps": result.version,
        "task": settings.task,
        "initial_metrics": dict(first.metrics),
        "final_metrics": dict(last.metrics),
        "final_federated_metrics": dict(last.federated),
        "federated_metrics_by_tier": {tier: dict(m) for tier, m in last.federated_by_tier.items()},
        "initial_accuracy": first.accuracy,
        "final_accuracy": last.accuracy,
        "final_loss": last.loss,
        "accuracy_by_tier": dict(last.tier_accuracy),
        "accuracy_gap": largest_gap(last.tier_accuracy),
        "wall_seconds": round(wall_seconds, 2),
        **({} if result.virtual_seconds is None else {"virtual_seconds": round(result.virtual_seconds, 2)}),
        "run_dir": str(run_dir.resolve()),
        **result.stats.summary(),
    }


def _configure_logging() -> None:
    """Progress lines go to the ServerApp's log, which ``flwr run --stream`` shows."""
    logger = logging.getLogger("server_app")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
