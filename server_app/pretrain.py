"""Where federated training begins (Nguyen et al., "Where to Begin?"): the seeded random
model, weights from a checkpoint file, or a server-side warm-up on a proxy split.

The proxy split is a seeded ``warmup-fraction`` sample of the task's proxy data (a built-in
task's: its training rows), drawn independently of partitions and tiers: public data from the
same distribution, the way the paper pre-trains. Warm-up is the task's training step with plain
SGD, ``client-lr`` and ``batch-size``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from fedbuff.settings import RunSettings, SettingsError
from fedbuff.task import CentralData, Examples, Task

log = logging.getLogger(__name__)
_PROXY_STREAM = 0x9A3E


def proxy_rows(settings: RunSettings, num_train: int) -> np.ndarray:
    """The warm-up rows: a seeded ``warmup-fraction`` sample of the training rows (sorted)."""
    size = max(1, round(settings.warmup_fraction * num_train))
    rng = np.random.default_rng([settings.seed, _PROXY_STREAM])
    return np.sort(rng.choice(num_train, size=size, replace=False))


def initial_weights(
    settings: RunSettings, model, central: CentralData | None, task: Task | None = None
) -> tuple[list[np.ndarray], str]:
    """The starting weights for ``model`` and a one-line description of where they came from.

    ``model`` holds the seeded random initialisation and is trained in place by a warm-up.
    """
    from fedbuff.model import get_weights

    if settings.initial_weights:
        return _from_checkpoint(settings.initial_weights, get_weights(model))
    if settings.warmup_steps:
        if central is None or central.proxy is None:
            raise SettingsError("warmup-steps needs a task with proxy data on the server (CentralData.proxy)")
        return _warm_up(settings, model, central.proxy, task or Task())
    return get_weights(model), f"random (seed {settings.seed})"


def _from_checkpoint(location: str, template: list[np.ndarray]) -> tuple[list[np.ndarray], str]:
    from server_app.checkpoint import CheckpointError, load_latest

    try:
        state, path = load_latest(Path(location))
    except CheckpointError as err:
        raise SettingsError(f"initial-weights: {err}") from err
    shapes = [a.shape for a in state.model]
    if shapes != [a.shape for a in template]:
        raise SettingsError(
            f"initial-weights: {path} holds arrays {shapes}, this run's model needs "
            f"{[a.shape for a in template]} (same task and model?)"
        )
    return [np.asarray(a, dtype=np.float32) for a in state.model], f"checkpoint {path} (version {state.version})"


def _warm_up(settings: RunSettings, model, proxy: Examples, task: Task) -> tuple[list[np.ndarray], str]:
    from fedbuff.model import get_weights, pick_device
    from fedbuff.training import train

    rows = proxy_rows(settings, len(proxy))
    epochs = math.ceil(settings.warmup_steps * settings.batch_size / len(rows)) + 1
    loss, steps = train(
        task,
        model,
        proxy.select(rows),
        epochs=epochs,
        steps=settings.warmup_steps,
        batch_size=settings.batch_size,
        lr=settings.client_lr,
        seed=settings.seed,
        device=pick_device(),
    )
    log.info("warm-up: %d SGD steps on %d proxy rows, mean loss %.3f", steps, len(rows), loss)
    return get_weights(model), f"warm-up ({steps} steps on {len(rows)} proxy rows)"
