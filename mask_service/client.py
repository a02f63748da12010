"""Client stub of the mask service, for the ServerApp (grpc + numpy; no cryptography needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from mask_service.wire import (
    CHECK_METHOD,
    PUBLIC_KEY_METHOD,
    UNMASK_METHOD,
    MaskServiceError,
    ServiceInfo,
    b64,
    contribution_to_json,
    decode_frame,
    encode_frame,
    unb64,
)
from strategies.ring import Contribution, from_wire


class MaskServiceClient:
    """``MaskServiceClient("127.0.0.1:9095").unmask(context, contributions, length)``.

    Every refusal or transport failure raises :class:`MaskServiceError` with a ``reason``
    (``too-few``, ``mask-reused``, ``bad-signature``, ``unknown-node``, ``weight-out-of-range``,
    ``duplicate-mask``, ``too-long``, ``malformed``, ``unavailable``, ...). With
    ``root_certificates`` the channel uses TLS (and mTLS with ``private_key`` +
    ``certificate_chain``).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 300.0,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        max_receive_bytes: int = -1,
        max_send_bytes: int = 256 << 20,
    ) -> None:
        self.address = address
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
        ]
        if root_certificates is not None or private_key is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._unmask = self._channel.unary_unary(UNMASK_METHOD)
        self._public_key = self._channel.unary_unary(PUBLIC_KEY_METHOD)
        self._check = self._channel.unary_unary(CHECK_METHOD)

    def __enter__(self) -> MaskServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects; MaskServiceError ``unavailable`` after ``timeout``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise MaskServiceError(
                "unavailable", f"no mask service at {self.address} after {timeout} s", grpc.StatusCode.UNAVAILABLE
            ) from None

    def _call(self, method: Any, request: bytes, timeout: float | None) -> tuple[dict[str, Any], memoryview]:
        try:
            response = method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise MaskServiceError.from_rpc_error(err) from None
        try:
            return decode_frame(response)
        except ValueError as err:
            raise MaskServiceError("malformed", f"bad response from the mask service: {err}") from err

    def info(self, timeout: float | None = None) -> ServiceInfo:
        """The service's public key, fingerprint and limits."""
        header, _ = self._call(self._public_key, encode_frame({}), timeout)
        try:
            return ServiceInfo(
                public_key=unb64(header["public_key"], "public_key"),
                fingerprint=str(header["fingerprint"]),
                k_min=int(header["k_min"]),
                max_weight=int(header["max_weight"]),
                max_length=int(header["max_length"]),
                max_contributions=int(header["max_contributions"]),
                protocol=str(header.get("protocol", "")),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise MaskServiceError("malformed", f"bad PublicKey response: {err}") from err

    def public_key(self, timeout: float | None = None) -> bytes:
        """Raw 32-byte X25519 public key to relay to clients (they check it against their pin)."""
        return self.info(timeout).public_key

    def check(
        self,
        context: bytes,
        contribution: Contribution | tuple,
        length: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Return when the service would accept ``contribution`` in an ``Unmask`` of ``context``.

        Raises :class:`MaskServiceError` with the reason ``Unmask`` would give
        (``bad-signature``, ``unknown-node``, ``mask-reused``, ``weight-out-of-range``,
        ``too-long``, ``malformed``), or ``unavailable``/``rpc-error`` when the service cannot
        be asked. Nothing is recorded: a checked mask can still be unmasked.
        """
        header: dict[str, Any] = {"context": b64(context), "contribution": contribution_to_json(contribution)}
        if length is not None:
            header["length"] = int(length)
        self._call(self._check, encode_frame(header), timeout)

    def unmask(
        self, context: bytes, contributions: Sequence[Contribution | tuple], length: int, timeout: float | None = None
    ) -> np.ndarray:
        """``Σ weight_i·mask_i (mod 2^64)`` over ``contributions`` as a uint64 vector of ``length``.

        ``contributions`` are :class:`strategies.ring.Contribution` (``MaskedBuffer.contributions``)
        or tuples ``(ephemeral_public, signature, node_key_fingerprint, weight)``.
        """
        request = encode_frame(
            {
                "context": b64(context),
                "length": int(length),
                "contributions": [contribution_to_json(c) for c in contributions],
            }
        )
        header, payload = self._call(self._unmask, request, timeout)
        try:
            return from_wire(payload, int(length))
        except ValueError as err:
            raise MaskServiceError("malformed", f"bad Unmask response ({header}): {err}") from err
