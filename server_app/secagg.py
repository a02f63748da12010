"""Server side of secure aggregation: the mask service, the masked buffer, the reply check.

The ServerApp never holds an individual update in the clear: replies carry masked ring
vectors, the buffer adds them with integer weights, and only the mask service can remove
the masks from a sum of at least K_min of them (docs/secure-aggregation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecordValues, RecordDict

from fedbuff import protocol
from fedbuff.settings import RunSettings
from mask_service.client import MaskServiceClient
from mask_service.masking import secagg_context
from mask_service.wire import REASONS, MaskServiceError
from server_app.loop import Validator
from server_app.validation import Rejection, ValidUpdate, update_byte_limit, validate_masked_reply
from strategies.base import AsyncStrategy, FlushError
from strategies.dp import FlushPrivacy
from strategies.registry import build_secure_strategy
from strategies.ring import Contribution

log = logging.getLogger(__name__)
READY_TIMEOUT_SECONDS = 15.0
# a check is one signature verification and one indexed lookup; it runs in the loop's thread
CHECK_TIMEOUT_SECONDS = 10.0


class SecAggSetupError(RuntimeError):
    """Secure aggregation cannot start: no service, or limits that cannot work together."""


@dataclass
class SecureAggregation:
    """What the loop needs: the strategy, the reply check, and the per-task config."""

    strategy: AsyncStrategy  # the registry's secure variant of the run's strategy
    validate: Validator
    task_config: dict[str, ConfigRecordValues]
    client: MaskServiceClient


def masked_validator(
    client: MaskServiceClient,
    context: bytes,
    length: int,
    timeout: float = CHECK_TIMEOUT_SECONDS,
    max_bytes: int | None = None,
    max_num_examples: int | None = None,
) -> Validator:
    """The reply check of secure aggregation: :func:`validate_masked_reply`, then the service's ``Check``.

    A contribution the service would refuse at flush (forged or mis-attributed signature,
    node key not registered, mask already unmasked, ...) is a :class:`Rejection`
    ``mask-refused`` with the service's reason in its detail, before the buffer is touched.
    A service that cannot be asked (down, deadline, transport error) gives
    ``mask-service-unavailable``: fail closed, so every buffered contribution was checked;
    the node is simply sent new work. Nothing here raises into the loop.
    """

    def validate(content: RecordDict) -> ValidUpdate | Rejection:
        checked = validate_masked_reply(content, length, max_bytes, max_num_examples)
        if isinstance(checked, Rejection):
            return checked
        mask = checked.mask
        assert mask is not None  # validate_masked_reply always sets it
        node = mask.node_key_fingerprint[:16]
        try:
            contribution = Contribution(mask.ephemeral_public, mask.signature, mask.node_key_fingerprint, 1)
            client.check(context, contribution, length, timeout=timeout)
        except MaskServiceError as err:
            if err.reason in REASONS:
                log.warning("mask service refuses the contribution of node key %s…: %s", node, err.details)
                return Rejection("mask-refused", err.details)
            log.warning("cannot check the contribution of node key %s… with the mask service: %s", node, err)
            return Rejection("mask-service-unavailable", str(err))
        except Exception as err:
            log.exception("checking the contribution of node key %s… failed", node)
            return Rejection("mask-service-unavailable", f"check failed: {err!r}")
        return checked

    return validate


def connect(
    settings: RunSettings,
    run_id: int,
    initial: list[np.ndarray],
    privacy: FlushPrivacy | None = None,
    max_num_examples: int | None = None,
) -> SecureAggregation:
    """Reach the mask service, check its limits against ours, and build the masked FedBuff.

    A reply claiming more than ``max_num_examples`` examples (default ``max-num-examples``) is refused."""
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
        if info.k_min > settings.buffer_size
        else "",
        f"secagg-max-weight {codec.max_weight} > the service's --max-weight {info.max_weight}"
        if codec.max_weight > info.max_weight
        else "",
        f"the model has {length} parameters > the service's --max-length {info.max_length}"
        if length > info.max_length
        else "",
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

    log.info(
        "secure aggregation on: mask service %s (fingerprint %s…, K_min %d)",
        settings.secagg_address,
        info.fingerprint[:16],
        info.k_min,
    )
    return SecureAggregation(
        strategy=build_secure_strategy(settings, initial, codec, unmask, privacy),
        validate=masked_validator(
            client,
            context,
            length,
            timeout=min(CHECK_TIMEOUT_SECONDS, settings.secagg_timeout_seconds),
            max_bytes=update_byte_limit(settings.max_update_bytes, initial),
            max_num_examples=max_num_examples or settings.max_num_examples,
        ),
        task_config={protocol.SECAGG_SERVICE_KEY: info.public_key},
        client=client,
    )
