"""Server side of secure aggregation: the mask service, the masked buffer, the reply check.

The ServerApp never holds an individual update in the clear: replies carry masked ring
vectors, the buffer adds them with integer weights, and only the mask service can remove
the masks from a sum of at least K_min of them (DESIGN.md §5, docs/secure-aggregation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np

from client_app.masking import secagg_context
from fedbuff.settings import RunSettings
from mask_service.client import MaskServiceClient
from mask_service.wire import MaskServiceError
from server_app.loop import Validator
from server_app.validation import validate_masked_reply
from strategies.base import FlushError
from strategies.dp import FlushPrivacy
from strategies.ring import Contribution
from strategies.secure_fedbuff import SecureFedBuff

log = logging.getLogger(__name__)
READY_TIMEOUT_SECONDS = 15.0


class SecAggSetupError(RuntimeError):
    """Secure aggregation cannot start: no service, or limits that cannot work together."""


@dataclass
class SecureAggregation:
    """What the loop needs: the strategy, the reply check, and the per-task config."""

    strategy: SecureFedBuff
    validate: Validator
    task_config: dict[str, object]
    client: MaskServiceClient


def connect(settings: RunSettings, run_id: int, initial: list[np.ndarray],
            privacy: FlushPrivacy | None = None) -> SecureAggregation:
    """Reach the mask service, check its limits against ours, and build the masked FedBuff."""
    client = MaskServiceClient(settings.secagg_address, timeout=settings.secagg_timeout_seconds)
    try:
        client.wait_ready(READY_TIMEOUT_SECONDS)
        info = client.info()
    except MaskServiceError as err:
        client.close()
        raise SecAggSetupError(f"mask service at {settings.secagg_address}: {err}") from err
    codec = settings.ring_codec()
    length = sum(int(a.size) for a in initial)
    problems = [
        f"the service's K_min {info.k_min} > buffer-size {settings.buffer_size}: no buffer could ever be unmasked"
        if info.k_min > settings.buffer_size else "",
        f"secagg-max-weight {codec.max_weight} > the service's --max-weight {info.max_weight}"
        if codec.max_weight > info.max_weight else "",
        f"the model has {length} parameters > the service's --max-length {info.max_length}"
        if length > info.max_length else "",
    ]
    if any(problems):
        client.close()
        raise SecAggSetupError("; ".join(p for p in problems if p))
    context = secagg_context(run_id, length)

    def unmask(contributions: list[Contribution], n: int) -> np.ndarray:
        try:
            return client.unmask(context, contributions, n)
        except MaskServiceError as err:
            raise FlushError("unmask-refused", str(err)) from err

    log.info("secure aggregation on: mask service %s (fingerprint %s…, K_min %d)",
             settings.secagg_address, info.fingerprint[:16], info.k_min)
    return SecureAggregation(
        strategy=SecureFedBuff(initial, settings, codec, unmask, privacy),
        validate=partial(validate_masked_reply, length=length),
        task_config={"secagg-service-key": info.public_key},
        client=client,
    )
