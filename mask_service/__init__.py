"""Asynchronous secure aggregation's masks (docs/secure-aggregation.md): the service and what
both ends of a masked update share.

- :mod:`mask_service.masking`: key agreement, one-time masks, signatures and the pinned service
  key; the ClientApp masks with it, the service recomputes masks with it (numpy, cryptography).
- :mod:`mask_service.client` and :mod:`mask_service.wire`: the ServerApp's stub and the wire
  format (grpc).
- :mod:`mask_service.service`: the service itself, ``python -m mask_service``.

Importing this package imports none of them: the ClientApp needs the masking alone.
"""
