"""ServerApp entry point: settings, data, model, FedBuff, the async loop, the run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedbuff.settings import RunSettings, SettingsError
from server_app.loop import AsyncLoop
from server_app.records import RunRecorder, default_run_dir
from strategies import FedBuff

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedBuff over the Grid until a stop condition, then write the summary."""
    _configure_logging()
    try:
        settings = RunSettings.from_run_config(context.run_config)
    except SettingsError as err:
        log.error("invalid run config: %s", err)
        raise
    from fedbuff.data import load_digits_split
    from fedbuff.model import build_model, evaluate, get_weights, set_weights

    _, test = load_digits_split(settings.seed, settings.test_fraction)
    model = build_model(settings.hidden_units, settings.seed)

    def evaluate_arrays(arrays: list) -> tuple[float, float]:
        set_weights(model, arrays)
        return evaluate(model, test.features, test.labels)

    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir()
    recorder = RunRecorder(run_dir)
    recorder.write_config(settings.as_dict())
    strategy = FedBuff(get_weights(model), settings.fedbuff_config())
    loop = AsyncLoop(grid, strategy, settings, evaluate_arrays, events=recorder)
    log.info(
        "FedBuff: concurrency %d, buffer %d, max %d server steps; run folder %s",
        settings.concurrency, settings.buffer_size, settings.max_server_steps, run_dir.resolve(),
    )
    started = time.monotonic()
    try:
        reason = loop.run()
    finally:
        recorder.checkpoint(strategy.model, strategy.version)
    first, last = loop.evaluations[0], loop.evaluations[-1]
    summary = {
        "stop_reason": reason,
        "strategy": "fedbuff",
        "server_steps": strategy.version,
        "initial_accuracy": first.accuracy,
        "final_accuracy": last.accuracy,
        "final_loss": last.loss,
        "wall_seconds": round(time.monotonic() - started, 2),
        "run_dir": str(run_dir.resolve()),
        **loop.stats.summary(),
    }
    recorder.write_summary(summary)
    recorder.close()
    log.info(
        "SUMMARY | %s | accuracy %.3f -> %.3f | %d server steps | updates accepted %d, refused %d | "
        "staleness mean %.2f max %d | %.1fs",
        reason, first.accuracy, last.accuracy, strategy.version, loop.stats.accepted,
        loop.stats.refused, loop.stats.staleness_mean(), loop.stats.staleness_max(),
        summary["wall_seconds"],
    )


def _configure_logging() -> None:
    """Progress lines go to the ServerApp's log, which ``flwr run --stream`` shows."""
    logger = logging.getLogger("server_app")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
