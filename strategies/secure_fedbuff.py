"""FedBuff over masked ring vectors: the server only ever reads sums of ≥ K_min updates.

Each buffer is a :class:`strategies.ring.MaskedBuffer`: the running sum of integer-weighted
masked vectors in Z_2^64. At flush the mask service returns ``Σ q_i·m_i`` for exactly the
buffer's contributions, the server subtracts it and decodes the weighted sum (docs/secure-aggregation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from strategies.base import Arrays, ClientUpdate, FlushError
from strategies.fedbuff import FedBuff
from strategies.ring import Contribution, MaskedBuffer, RingCodec, RingOverflowError

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions

# Σ q_i·m_i for the given contributions and vector length; raises FlushError when refused.
Unmask = Callable[[list[Contribution], int], np.ndarray]


class SecureFedBuff(FedBuff):
    """FedBuff whose buffers hold masked vectors; ``unmask`` talks to the mask service.

    The float weight ``s(τ)·e(n)`` is quantised to an integer ``q`` (``codec.weight_scale``
    stands for 1.0) because only integers can scale a masked ring vector. An update whose
    ``q`` is 0 carries nothing and is refused as stale. A buffer the service refuses, or
    whose decoded sum overflowed, is dropped whole: no partial information leaves it.
    """

    def __init__(
        self,
        initial: Arrays,
        options: StrategyOptions,
        codec: RingCodec,
        unmask: Unmask,
        privacy: FlushPrivacy | None = None,
    ) -> None:
        self.codec = codec
        self._unmask = unmask
        self._shapes = [np.shape(a) for a in initial]
        super().__init__(initial, options, privacy)

    def _new_buffer(self) -> MaskedBuffer:  # type: ignore[override]
        return MaskedBuffer(self.codec, self._shapes)

    def _add(self, buffer: MaskedBuffer, update: ClientUpdate, weight: float) -> bool:  # type: ignore[override]
        if update.mask is None or len(update.delta) != 1:
            raise ValueError("secure aggregation needs one masked vector and its mask envelope")
        quantized = self.codec.quantize_weight(min(weight, self.codec.max_weight / self.codec.weight_scale))
        if quantized == 0:
            return False
        buffer.add(
            update.client_id,
            update.delta[0],
            weight=quantized,
            ephemeral_public=update.mask.ephemeral_public,
            signature=update.mask.signature,
            node_key_fingerprint=update.mask.node_key_fingerprint,
        )
        return True

    def _drain(self, buffer: MaskedBuffer) -> tuple[Arrays, int, float]:  # type: ignore[override]
        mask_sum = self._unmask(buffer.contributions, buffer.length)
        try:
            flushed = buffer.flush(mask_sum)
        except RingOverflowError as err:
            raise FlushError("ring-overflow", str(err)) from err
        if flushed.overflow:
            raise FlushError("ring-overflow", f"{flushed.overflow} coordinates outside the codec's bound")
        return flushed.total, flushed.count, flushed.total_weight
