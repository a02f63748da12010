"""The mask service of asynchronous secure aggregation (DESIGN.md §5, docs/secure-aggregation.md).

``python -m mask_service`` runs the service (:mod:`mask_service.service`); the ServerApp
talks to it through :class:`MaskServiceClient`. Importing this package loads only the
client stub and the wire format (grpc, numpy), not the service.
"""

from mask_service.client import MaskServiceClient
from mask_service.wire import MaskServiceError, ServiceInfo

__all__ = ["MaskServiceClient", "MaskServiceError", "ServiceInfo"]
